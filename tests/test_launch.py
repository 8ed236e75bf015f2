"""launch/: sweep expansion, naming, quoting and local runs; the shell templates' dry runs,
and the TPU run/stop remote commands executed in a sandbox home directory."""

import importlib.util
import json
import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
SCRIPTS = [LAUNCH / "local.sh", LAUNCH / "tpu_pod.sh", LAUNCH / "slurm_gpu.sbatch"]
BASH = shutil.which("bash")


def _load_sweep():
  spec = importlib.util.spec_from_file_location("launch_sweep", LAUNCH / "sweep.py")
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses look their module up while it executes
  spec.loader.exec_module(module)
  return module


sweep = _load_sweep()


def run_sweep(capsys, *args):
  rc = sweep.main(list(args))
  out = capsys.readouterr()
  return rc, out.out, out.err


def sweep_error(capsys, *args):
  with pytest.raises(SystemExit) as e:
    sweep.main(list(args))
  assert e.value.code == 2
  return capsys.readouterr().err


BASE = ("--config", "configs/world_classifier.py:runlocal", "--workdir-base", "/tmp/sw")


# ------------------------------------------------------------------------------------------
# sweep.py: expansion


def test_grid_is_a_product_first_axis_slowest(capsys):
  rc, out, _ = run_sweep(capsys, *BASE, "--grid", "config.optimizer.lr=1e-3,3e-4",
                         "--grid", "config.model.variant=S/16,B/16", "--print")
  assert rc == 0
  lines = [shlex.split(line) for line in out.splitlines()]
  got = [(a[a.index("--workdir") + 1], [w for w in a if w.startswith("--config.")])
         for a in lines]
  assert got == [
      ("/tmp/sw/lr=1e-3_variant=S-16", ["--config.optimizer.lr=1e-3", "--config.model.variant=S/16"]),
      ("/tmp/sw/lr=1e-3_variant=B-16", ["--config.optimizer.lr=1e-3", "--config.model.variant=B/16"]),
      ("/tmp/sw/lr=3e-4_variant=S-16", ["--config.optimizer.lr=3e-4", "--config.model.variant=S/16"]),
      ("/tmp/sw/lr=3e-4_variant=B-16", ["--config.optimizer.lr=3e-4", "--config.model.variant=B/16"]),
  ]
  assert lines[0][:5] == ["sketchseg", "train", "--config",
                          "configs/world_classifier.py:runlocal", "--workdir"]


def test_zip_advances_together_and_crosses_with_grid():
  runs = sweep.expand(grid=[("seed", ["0", "1"])],
                      zipped=[("optimizer.lr", ["1e-3", "3e-4"]), ("model.depth", ["2", "4"])])
  assert runs == [
      {"seed": "0", "optimizer.lr": "1e-3", "model.depth": "2"},
      {"seed": "0", "optimizer.lr": "3e-4", "model.depth": "4"},
      {"seed": "1", "optimizer.lr": "1e-3", "model.depth": "2"},
      {"seed": "1", "optimizer.lr": "3e-4", "model.depth": "4"},
  ]


def test_zip_lengths_must_match(capsys):
  err = sweep_error(capsys, *BASE, "--zip", "a=1,2", "--zip", "b=x,y,z")
  assert "equal lengths" in err and "a has 2" in err and "b has 3" in err


def test_conflicting_and_invalid_inputs_are_errors(capsys):
  assert "both --grid and --zip" in sweep_error(capsys, *BASE, "--grid", "a=1,2", "--zip", "config.a=3,4")
  assert "given twice" in sweep_error(capsys, *BASE, "--grid", "a=1", "--grid", "a=2")
  assert "identical" in sweep_error(capsys, *BASE, "--grid", "a=1,1")
  assert "not a dotted config key" in sweep_error(capsys, *BASE, "--grid", "a b=1")
  assert "expected KEY=VALUE" in sweep_error(capsys, *BASE, "--grid", "lr")
  assert "empty value" in sweep_error(capsys, *BASE, "--grid", "a=1,,2")
  assert "unrecognised argument" in sweep_error(capsys, *BASE, "--grid", "a=1", "--bogus")
  assert "outside 0..1" in sweep_error(capsys, *BASE, "--grid", "a=1,2", "--index", "2")
  assert "constant --config override" in sweep_error(capsys, *BASE, "--grid", "a=1,2",
                                                     "--config.a=5")


def test_split_values_respects_brackets_quotes_and_escapes():
  assert sweep.split_values("(16,16),(14, 14)", "t") == ["(16,16)", "(14, 14)"]
  assert sweep.split_values("[1,2],{'a': 1, 'b': 2}", "t") == ["[1,2]", "{'a': 1, 'b': 2}"]
  assert sweep.split_values("'x,y',it's", "t") == ["'x,y'", "it's"]
  assert sweep.split_values(r"a\,b,c", "t") == ["a,b", "c"]
  for bad in ["(1,2", "1,2)", "'a,b", "a,", ""]:
    with pytest.raises(sweep.SweepError):
      sweep.split_values(bad, "t")


def test_spec_file_values_and_product(tmp_path, capsys):
  spec = tmp_path / "my_sweep.py"
  spec.write_text(textwrap.dedent("""
      def get_sweep():
        return [
            {"config.optimizer.lr": 1e-3, "model.patch": (16, 16), "use_ema": True},
            {"config.optimizer.lr": 3e-4, "model.patch": [14, 14], "use_ema": False},
        ]
      """))
  rc, out, _ = run_sweep(capsys, *BASE, "--spec", str(spec), "--grid", "seed=0,1",
                         "--config.total_steps=10", "--print")
  assert rc == 0
  lines = [shlex.split(line) for line in out.splitlines()]
  assert len(lines) == 4
  assert lines[0][6:] == ["--config.optimizer.lr=0.001", "--config.model.patch=(16, 16)",
                          "--config.use_ema=True", "--config.seed=0",
                          "--config.total_steps=10"]
  assert lines[3][6:] == ["--config.optimizer.lr=0.0003", "--config.model.patch=(14, 14)",
                          "--config.use_ema=False", "--config.seed=1",
                          "--config.total_steps=10"]
  # The constant is in every command but in no name.
  assert lines[0][5] == "/tmp/sw/lr=0.001_patch=16-16_use_ema=True_seed=0"


def test_spec_file_errors(tmp_path, capsys):
  no_fn = tmp_path / "no_fn.py"
  no_fn.write_text("X = 1\n")
  assert "no get_sweep()" in sweep_error(capsys, *BASE, "--spec", str(no_fn))
  bad_entry = tmp_path / "bad_entry.py"
  bad_entry.write_text("def get_sweep():\n  return [{'a': 1}, ['b', 2]]\n")
  assert "entry 1 is a list" in sweep_error(capsys, *BASE, "--spec", str(bad_entry))
  bad_value = tmp_path / "bad_value.py"
  bad_value.write_text("def get_sweep():\n  return [{'a': {'nested': 1}}]\n")
  assert "cannot be passed" in sweep_error(capsys, *BASE, "--spec", str(bad_value))
  assert "no such file" in sweep_error(capsys, *BASE, "--spec", str(tmp_path / "missing.py"))


# ------------------------------------------------------------------------------------------
# sweep.py: names


def test_names_use_only_varied_keys_and_are_sanitised():
  runs = [{"model.variant": "S/16", "total_steps": "10"},
          {"model.variant": "B/16", "total_steps": "10"}]
  assert sweep.run_names(runs) == ["variant=S-16", "variant=B-16"]
  assert sweep.run_names([{"a": "1"}]) == ["a=1"]  # nothing varies: all keys
  assert sweep.run_names([{}]) == ["run"]
  # One path component each: no '/' survives, so nothing escapes the base directory.
  assert sweep.run_names([{"x": "../../etc"}, {"x": ".hidden"}]) == ["x=..-..-etc", "x=.hidden"]
  assert sweep.sanitize(".x") == "run_.x" and sweep.sanitize("--x") == "x"
  assert sweep.run_names([{"x": "$(rm -rf ~)"}, {"x": "a b"}]) == ["x=rm-rf", "x=a-b"]


def test_short_labels_disambiguate_same_last_part():
  runs = [{"optimizer.lr": "1", "schedule.lr": "2", "head.dropout": "0"},
          {"optimizer.lr": "3", "schedule.lr": "4", "head.dropout": "0.1"}]
  assert sweep.run_names(runs) == ["optimizer.lr=1_schedule.lr=2_dropout=0",
                                   "optimizer.lr=3_schedule.lr=4_dropout=0.1"]


def test_names_are_unique_even_after_cleaning_and_case_folding():
  runs = [{"v": "S/16"}, {"v": "S-16"}, {"v": "s-16"}, {"v": "S:16"}]
  names = sweep.run_names(runs)
  assert names == ["v=S-16", "v=S-16-2", "v=s-16-3", "v=S-16-4"]
  assert len({n.lower() for n in names}) == 4


def test_names_do_not_depend_on_position():
  runs = sweep.expand(grid=[("a", ["1", "2", "3"]), ("b", ["x", "y"])])
  names = dict(zip(map(lambda r: tuple(r.items()), runs), sweep.run_names(runs)))
  shuffled = runs[::-1]
  names_rev = dict(zip(map(lambda r: tuple(r.items()), shuffled), sweep.run_names(shuffled)))
  assert names == names_rev


def test_long_names_are_cut_with_a_hash_and_stay_distinct():
  long_a, long_b = "x" * 300 + "a", "x" * 300 + "b"
  names = sweep.run_names([{"k": long_a}, {"k": long_b}])
  assert all(len(n) <= sweep.MAX_NAME_LEN for n in names)
  assert names[0] != names[1]


def test_workdir_base_may_be_a_bucket(capsys):
  rc, out, _ = run_sweep(capsys, "--config", "c.py", "--workdir-base", "gs://bucket/sweeps/",
                         "--grid", "a=1,2", "--print")
  assert [shlex.split(l)[5] for l in out.splitlines()] == ["gs://bucket/sweeps/a=1",
                                                           "gs://bucket/sweeps/a=2"]


# ------------------------------------------------------------------------------------------
# sweep.py: quoting, modes


def test_print_is_shell_quoted_round_trip(capsys):
  values = ["it's", "a b", "$HOME", "x;rm -rf /", '"q"']
  rc, out, _ = run_sweep(capsys, *BASE, "--grid", "name=" + ",".join(
      v.replace(",", r"\,") for v in values), "--sketchseg-cmd", "python -m sketchseg_jax.cli",
      "--print", "--", "--engine-flag", "with space")
  lines = out.splitlines()
  assert len(lines) == len(values)
  for line, value in zip(lines, values):
    argv = shlex.split(line)
    assert argv[:4] == ["python", "-m", "sketchseg_jax.cli", "train"]
    assert f"--config.name={value}" in argv
    assert argv[-2:] == ["--engine-flag", "with space"]
    # And a real shell hands the same words over.
    echoed = subprocess.run([BASH, "-c", "printf '%s\\n' " + line], capture_output=True,
                            text=True, check=True).stdout.splitlines()
    assert echoed == argv


def test_count_index_and_dry_run(capsys, tmp_path):
  args = ("--config", "c.py", "--workdir-base", str(tmp_path), "--grid", "a=1,2,3")
  assert run_sweep(capsys, *args, "--count")[1] == "3\n"
  _, out, _ = run_sweep(capsys, *args, "--print", "--index", "1")
  assert shlex.split(out)[5] == f"{tmp_path}/a=2"
  (tmp_path / "a=2").mkdir()
  _, out, _ = run_sweep(capsys, *args, "--dry-run")
  assert "[2/3] a=2  (exists" in out and "[1/3] a=1\n" in out
  assert out.count("would run: ") == 3


FAKE_ENGINE = textwrap.dedent("""
    import json, os, sys
    args = sys.argv[1:]
    with open(os.environ["SWEEP_LOG"], "a") as f:
      f.write(json.dumps(args) + "\\n")
    sys.exit(3 if "--config.a=2" in args else 0)
    """)


@pytest.mark.parametrize("keep_going", [False, True])
def test_run_executes_in_order_and_handles_failure(tmp_path, capsys, monkeypatch, keep_going):
  engine = tmp_path / "fake_engine.py"
  engine.write_text(FAKE_ENGINE)
  log = tmp_path / "calls.jsonl"
  monkeypatch.setenv("SWEEP_LOG", str(log))
  args = ["--config", "c.py", "--workdir-base", str(tmp_path / "runs"), "--grid", "a=1,2,3",
          "--config.steps=5", "--sketchseg-cmd", f"{shlex.quote(sys.executable)} {engine}",
          "--run"] + (["--keep-going"] if keep_going else [])
  rc, _, err = run_sweep(capsys, *args)
  calls = [json.loads(l) for l in log.read_text().splitlines()]
  assert rc == 1
  expected = ["1", "2", "3"] if keep_going else ["1", "2"]
  assert [c[4] for c in calls] == [str(tmp_path / "runs" / f"a={a}") for a in expected]
  assert all(c[:3] == ["train", "--config", "c.py"] and "--config.steps=5" in c for c in calls)
  assert "failed: a=2 (exit 3)" in err
  assert (f"{2 if keep_going else 1} ok, 1 failed, {0 if keep_going else 1} not run") in err


def test_run_all_ok_exits_zero(tmp_path, capsys):
  rc, _, err = run_sweep(capsys, "--config", "c.py", "--workdir-base", str(tmp_path),
                         "--zip", "a=1,3", "--zip", "b=x,y", "--run",
                         "--sketchseg-cmd", f"{shlex.quote(sys.executable)} -c pass")
  assert rc == 0 and "2 runs: 2 ok, 0 failed, 0 not run" in err


TERM_ENGINE = textwrap.dedent("""
    import os, signal, sys, time
    out = os.environ["OUT_DIR"]
    def on_term(signum, frame):
      open(os.path.join(out, "terminated"), "w").write(sys.argv[-1])
      sys.exit(0)
    signal.signal(signal.SIGTERM, on_term)
    open(os.path.join(out, "started"), "a").write(sys.argv[-1] + "\\n")
    time.sleep(120)
    """)


def test_run_passes_sigterm_to_the_running_child_and_stops(tmp_path):
  engine = tmp_path / "engine.py"
  engine.write_text(TERM_ENGINE)
  proc = subprocess.Popen(
      [sys.executable, str(LAUNCH / "sweep.py"), "--config", "c.py", "--workdir-base",
       str(tmp_path), "--grid", "a=1,2", "--run", "--sketchseg-cmd",
       f"{shlex.quote(sys.executable)} {engine}"],
      env={**os.environ, "OUT_DIR": str(tmp_path)}, stderr=subprocess.PIPE, text=True)
  try:
    for _ in range(600):
      if (tmp_path / "started").exists():
        break
      time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert (tmp_path / "terminated").read_text() == "--config.a=1"
  assert (tmp_path / "started").read_text() == "--config.a=1\n"  # the second never started
  assert proc.returncode == 1 and "1 ok, 0 failed, 1 not run" in err


# ------------------------------------------------------------------------------------------
# Shell templates


def bash_script(script, *args, env=None, check=True, path=None):
  full_env = {"PATH": path or os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
  full_env.update(env or {})
  proc = subprocess.run([BASH, str(script), *args], capture_output=True, text=True,
                        env=full_env, timeout=60)
  if check:
    assert proc.returncode == 0, proc.stderr
  return proc


def commands(stdout):
  """Printed command lines (comments and exports skipped) as argv lists."""
  return [shlex.split(l) for l in stdout.splitlines()
          if l and not l.startswith(("#", "export ", "cd "))]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse(script):
  subprocess.run([BASH, "-n", str(script)], check=True)
  assert os.access(script, os.X_OK)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_are_shellcheck_clean(script):
  proc = subprocess.run(["shellcheck", "-x", "--shell=bash", script.name], cwd=script.parent,
                        capture_output=True,
                        text=True)
  assert proc.returncode == 0, proc.stdout


def test_local_dry_run_single_and_multi_process():
  out = bash_script(LAUNCH / "local.sh", "--config.seed=3", "--config.name=a b",
                    env={"DRY_RUN": "1", "CONFIG": "configs/x.py:runlocal", "WORKDIR": "/tmp/w",
                         "EXTRA": "--config.total_steps=7", "SKETCHSEG": "sketchseg"}).stdout
  assert commands(out) == [["sketchseg", "train", "--config", "configs/x.py:runlocal",
                            "--workdir", "/tmp/w", "--config.total_steps=7", "--config.seed=3",
                            "--config.name=a b"]]
  assert "export TF_CPP_MIN_LOG_LEVEL=1" in out
  out = bash_script(LAUNCH / "local.sh", env={"DRY_RUN": "1", "NUM_PROCESSES": "2",
                                              "CPU_DEVICES": "4", "SKETCHSEG": "sketchseg"}).stdout
  cmds = commands(out)
  assert [c[:4] for c in cmds] == [
      ["env", "JAX_COORDINATOR_ADDRESS=127.0.0.1:12355", "JAX_NUM_PROCESSES=2", "JAX_PROCESS_ID=0"],
      ["env", "JAX_COORDINATOR_ADDRESS=127.0.0.1:12355", "JAX_NUM_PROCESSES=2", "JAX_PROCESS_ID=1"]]
  assert all(c[4:6] == ["sketchseg", "train"] for c in cmds)
  assert "export JAX_PLATFORMS=cpu" in out
  assert "--xla_force_host_platform_device_count=4" in out
  bad = bash_script(LAUNCH / "local.sh", env={"NUM_PROCESSES": "two"}, check=False)
  assert bad.returncode == 2 and "NUM_PROCESSES" in bad.stderr


FAKE_PROCESS = textwrap.dedent("""
    import os, sys, time
    pid = os.environ["JAX_PROCESS_ID"]
    with open(os.path.join(os.environ["OUT_DIR"], "p" + pid), "w") as f:
      f.write(" ".join([os.environ["JAX_COORDINATOR_ADDRESS"], os.environ["JAX_NUM_PROCESSES"]]
                       + sys.argv[1:]))
    if pid == os.environ.get("FAIL_ID"):
      sys.exit(4)
    time.sleep(float(os.environ.get("SLEEP", "0")))
    """)


def test_local_multi_process_runs_and_stops_on_failure(tmp_path):
  fake = tmp_path / "fake.py"
  fake.write_text(FAKE_PROCESS)
  env = {"NUM_PROCESSES": "3", "WORKDIR": str(tmp_path / "wd"), "OUT_DIR": str(tmp_path),
         "SKETCHSEG": f"{sys.executable} {fake}", "COORDINATOR_PORT": "23456"}
  bash_script(LAUNCH / "local.sh", "--config.a=1", env=env)
  for i in range(3):
    words = (tmp_path / f"p{i}").read_text().split()
    assert words[:2] == ["127.0.0.1:23456", "3"]
    assert words[2:] == ["train", "--config", "configs/world_classifier.py:runlocal",
                         "--workdir", str(tmp_path / "wd"), "--config.a=1"]
  assert (tmp_path / "wd" / "process_logs").is_dir()
  # One process fails while the others would sleep for minutes: all stop, status 1.
  proc = bash_script(LAUNCH / "local.sh", env={**env, "FAIL_ID": "1", "SLEEP": "300"},
                     check=False)
  assert proc.returncode == 1 and "a process failed" in proc.stderr


def tpu_dry_run(*args, env=None, path=None):
  base = {"DRY_RUN": "1", "PROJECT": "proj", "ZONE": "us-west4-a", "TPU_NAME": "pod1",
          "ACCELERATOR_TYPE": "v5litepod-16", "WORKDIR": "gs://bkt/runs/wc",
          "CONFIG": "configs/world_classifier.py"}
  base.update(env or {})
  return bash_script(LAUNCH / "tpu_pod.sh", *args, env=base, path=path)


def test_tpu_pod_dry_run_commands():
  out = tpu_dry_run("create", "setup", "run", "logs", "stop", "delete", "--",
                    "--config.optimizer.lr=3e-4", "--config.name=a b",
                    env={"SPOT": "1", "EXTRA": "--config.seed=2"}).stdout
  cmds = commands(out)
  gcloud = [c for c in cmds if c[0] == "gcloud"]
  assert all(c[1:4] == ["compute", "tpus", "tpu-vm"] for c in gcloud)
  assert all("--zone=us-west4-a" in c and "--project=proj" in c for c in gcloud)
  create, scp, setup, run, logs, stop, delete = gcloud
  assert create[4:6] == ["create", "pod1"]
  assert "--accelerator-type=v5litepod-16" in create
  assert "--version=v2-alpha-tpuv5-lite" in create and "--spot" in create
  tar = next(c for c in cmds if c[0] == "tar")
  assert "--exclude=./.venv" in tar and tar[tar.index("-C") + 1] == str(ROOT)
  assert scp[4] == "scp" and scp[5] == tar[2] and scp[6] == "pod1:sketchseg_code.tgz"
  assert "--worker=all" in scp
  for c in (setup, run, stop):
    assert c[4:6] == ["ssh", "pod1"] and "--worker=all" in c
  setup_cmd = setup[setup.index("--command") + 1]
  assert "jax[tpu]==" in setup_cmd and "-e sketchseg" in setup_cmd
  run_cmd = run[run.index("--command") + 1]
  assert "nohup " in run_cmd
  train = shlex.split(run_cmd.split("nohup ", 1)[1].split(" > ", 1)[0])
  assert train[:3] == ["env", "TF_CPP_MIN_LOG_LEVEL=1", "SKETCHSEG_DISTRIBUTED=1"]
  assert train[4:] == ["train", "--config", "configs/world_classifier.py", "--workdir",
                       "gs://bkt/runs/wc", "--config.seed=2", "--config.optimizer.lr=3e-4",
                       "--config.name=a b"]
  assert logs[4:6] == ["ssh", "pod1"] and "--worker=0" in logs
  assert "tail" in logs[logs.index("--command") + 1]
  assert "kill -TERM" in stop[stop.index("--command") + 1]
  assert delete[4:6] == ["delete", "pod1"] and "--quiet" in delete


def test_tpu_pod_defaults_to_dry_run_without_gcloud(tmp_path):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for tool in ("dirname", "sed"):
    (bin_dir / tool).symlink_to(shutil.which(tool))
  proc = bash_script(LAUNCH / "tpu_pod.sh", "create", path=str(bin_dir),
                     env={"TPU_NAME": "pod2"})
  assert "gcloud not found" in proc.stderr
  assert commands(proc.stdout)[0][:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "pod2"]
  bad = bash_script(LAUNCH / "tpu_pod.sh", "explode", env={"DRY_RUN": "1"}, check=False)
  assert bad.returncode == 2 and "unknown subcommand" in bad.stderr


@pytest.mark.skipif(shutil.which("gcloud") is None, reason="gcloud not installed")
def test_tpu_pod_commands_parse_with_real_gcloud(tmp_path):
  """Each printed gcloud command gets past gcloud's argument parser: with an empty config
  directory and no credentials it stops at 'no active account', before any API call."""
  out = tpu_dry_run("create", "setup", "run", "logs", "stop", "status", "delete", "--",
                    "--config.x=1").stdout
  gcloud = [c for c in commands(out) if c[0] == "gcloud"]
  assert len(gcloud) == 8
  env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "CLOUDSDK_CONFIG": str(tmp_path / "cfg"),
         "CLOUDSDK_CORE_DISABLE_PROMPTS": "1"}
  for argv in gcloud:
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode != 0
    assert "unrecognized arguments" not in proc.stderr, proc.stderr
    assert "active account" in proc.stderr, proc.stderr


FAKE_SKETCHSEG = textwrap.dedent("""\
    #!/usr/bin/env bash
    trap 'echo TERM >> "$HOME/terminated"; exit 0' TERM
    echo "cwd=$PWD libtpu=${LIBTPU_INIT_ARGS:-} args=$*"
    while true; do sleep 0.05; done
    """)


def test_tpu_pod_run_and_stop_commands_work_on_a_worker(tmp_path):
  """Run the remote command lines that `run` and `stop` send, in a sandbox home."""
  home = tmp_path / "home"
  (home / "sketchseg").mkdir(parents=True)
  fake = home / "sketchseg_venv" / "bin" / "sketchseg"
  fake.parent.mkdir(parents=True)
  fake.write_text(FAKE_SKETCHSEG)
  fake.chmod(0o755)
  out = tpu_dry_run("run", "stop", "--", "--config.name=a b",
                    env={"LIBTPU_INIT_ARGS": "--xla_x=1"}).stdout
  run, stop = [c[c.index("--command") + 1] for c in commands(out)]
  worker_env = {"PATH": os.environ["PATH"], "HOME": str(home)}

  def on_worker(cmd):
    return subprocess.run([BASH, "-c", cmd], capture_output=True, text=True, env=worker_env,
                          timeout=30)

  started = on_worker(run)
  pid_file = home / "sketchseg_train.pid"
  assert started.returncode == 0, started.stderr
  pid = int(pid_file.read_text())
  try:
    log = home / "sketchseg_train.log"
    for _ in range(200):
      if log.exists() and log.read_text():
        break
      time.sleep(0.05)
    assert log.read_text().strip() == (
        f"cwd={home}/sketchseg libtpu=--xla_x=1 args=train --config "
        "configs/world_classifier.py --workdir gs://bkt/runs/wc --config.name=a b")
    again = on_worker(run)
    assert again.returncode == 1 and "still alive" in again.stderr
    assert int(pid_file.read_text()) == pid
    stopped = on_worker(stop)
    assert "sent SIGTERM" in stopped.stdout
    for _ in range(200):
      if (home / "terminated").exists():
        break
      time.sleep(0.05)
    assert (home / "terminated").read_text() == "TERM\n"
  finally:
    try:
      os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
      pass


def slurm_dry_run(*args, env=None):
  base = {"DRY_RUN": "1", "CONFIG": "configs/world_classifier.py", "WORKDIR": "/shared/wc",
          "SKETCHSEG": "sketchseg"}
  base.update(env or {})
  return bash_script(LAUNCH / "slurm_gpu.sbatch", *args, env=base)


def test_slurm_header_asks_one_task_per_gpu():
  lines = (LAUNCH / "slurm_gpu.sbatch").read_text().splitlines()
  first_command = next(i for i, l in enumerate(lines[1:], 1)
                       if l.strip() and not l.startswith("#"))
  # sbatch stops reading directives at the first command.
  assert all(not l.startswith("#SBATCH") for l in lines[first_command:])
  directives = {}
  for l in lines[:first_command]:
    if l.startswith("#SBATCH "):
      key, _, value = l.split()[1].lstrip("-").partition("=")
      directives[key] = value
  assert directives["ntasks-per-node"] == directives["gpus-per-node"] == "8"
  assert directives["signal"] == "TERM@120" and "requeue" in directives
  assert {"nodes", "time"} <= set(directives) and "gpus-per-task" not in directives


def test_slurm_dry_run_outside_a_job_prints_sbatch_and_srun():
  out = slurm_dry_run("--config.seed=3", env={"NODES": "4", "GPUS_PER_NODE": "4",
                                              "TIME": "1:00:00", "EXTRA": "--config.a=1"}).stdout
  cmds = commands(out)
  sbatch, srun = cmds
  assert sbatch[:2] == ["sbatch", "--export=ALL"]
  assert sbatch[-2:] == [str(LAUNCH / "slurm_gpu.sbatch"), "--config.seed=3"]
  assert f"cd {ROOT}" in out.splitlines()
  assert {"--nodes=4", "--gpus-per-node=4", "--ntasks-per-node=4", "--time=1:00:00"} <= set(sbatch)
  assert srun[:2] == ["srun", "--kill-on-bad-exit=1"]
  assert srun[2:] == ["sketchseg", "train", "--config", "configs/world_classifier.py",
                      "--workdir", "/shared/wc", "--config.a=1", "--config.seed=3"]
  assert "--xla_gpu_enable_latency_hiding_scheduler=true" in out
  assert "JAX_LOCAL_DEVICE_IDS" not in out


def test_slurm_inside_a_job_adapts_to_tasks_per_node():
  job = {"SLURM_JOB_ID": "42", "SLURM_SUBMIT_DIR": str(ROOT), "SLURM_GPUS_ON_NODE": "8"}
  per_gpu = slurm_dry_run(env={**job, "SLURM_NTASKS_PER_NODE": "8"}).stdout
  assert "sbatch" not in per_gpu and "JAX_LOCAL_DEVICE_IDS" not in per_gpu
  assert commands(per_gpu)[0][0] == "srun"
  per_node = slurm_dry_run("--config.b=2", env={**job, "SLURM_NTASKS_PER_NODE": "1"}).stdout
  assert "export JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7" in per_node
  assert commands(per_node)[0][-1] == "--config.b=2"
  bad = bash_script(LAUNCH / "slurm_gpu.sbatch",
                    env={**job, "DRY_RUN": "1", "SLURM_NTASKS_PER_NODE": "3"}, check=False)
  assert bad.returncode == 2 and "3 tasks per node with 8 GPUs" in bad.stderr
