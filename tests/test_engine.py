"""The training engine on the world-classifier stage: configs, sharding equivalence across
meshes, exact resume after SIGKILL, SIGTERM saves, damaged checkpoints, NaN policy,
restoring onto another topology, and two processes agreeing."""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from sketchseg_jax.errors import UserError
from sketchseg_jax.train import loop
from sketchseg_jax.train.checkpoints import read_state
from sketchseg_jax.train.config_lib import load_config, parse_arg

CONFIG = str(Path(__file__).parent.parent / "configs" / "world_classifier.py")
FAST = ["--config.log_every_steps=1", "--config.eval_every_steps=0", "--config.tensorboard=False",
        "--config.checkpoint.async_save=False"]


def config(*overrides):
  return load_config(f"{CONFIG}:runlocal", list(FAST) + list(overrides))


def losses(workdir):
  rows = [json.loads(l) for l in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
  return {r["step"]: r["loss"] for r in rows if "loss" in r}


def params(workdir, step=None):
  state, _ = read_state(Path(workdir) / "checkpoints", step)
  return jax.tree.map(np.asarray, state["params"])


def assert_trees_close(a, b, atol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, atol=atol, rtol=0)


# ------------------------------------------------------------------ configs

def test_config_args_and_overrides_are_typed():
  assert parse_arg("runlocal,variant=B/16", runlocal=False, variant="").variant == "B/16"
  with pytest.raises(UserError, match="not one of"):
    parse_arg("nope=1", runlocal=False)
  c = config("--config.optimizer.lr=3e-4", "--config.total_steps=7",
             "--config.mesh=[('data', 2), ('fsdp', -1)]")
  assert c.optimizer.lr == 3e-4 and c.total_steps == 7 and c.mesh[1] == ("fsdp", -1)
  with pytest.raises(UserError, match="no such key"):
    config("--config.optimizer.learning_rate=1")
  with pytest.raises(UserError, match="expected int"):
    config("--config.total_steps=ten")
  with pytest.raises(UserError, match="does not exist"):
    load_config("configs/nope.py")


def test_a_saved_config_continues_its_run_further(tmp_path):
  loop.train(config("--config.total_steps=2", "--config.checkpoint.every_steps=2"), tmp_path)
  saved = tmp_path / "config.json"
  c = load_config(str(saved), ["--config.total_steps=4"])
  assert c.total_steps == 4 and c.optimizer.lr == config().optimizer.lr
  loop.train(c, tmp_path)
  assert sorted(losses(tmp_path)) == [1, 2, 3, 4]
  with pytest.raises(UserError, match="takes no ':ARG'"):
    load_config(f"{saved}:runlocal")
  with pytest.raises(UserError, match="no such key"):
    load_config(str(saved), ["--config.optimizer.learning_rate=1"])
  (tmp_path / "bad.json").write_text("{not json")
  with pytest.raises(UserError, match="invalid JSON"):
    load_config(str(tmp_path / "bad.json"))


# ------------------------------------------------------------------ sharding

MESHES = {
    "1": ["--config.mesh=[('data', 1)]"],
    "8": ["--config.mesh=[('data', 8)]"],
    "4x2": ["--config.mesh=[('data', 4), ('fsdp', 2)]", "--config.sharding.rules=[('.*', 'fsdp')]"],
}


@pytest.fixture(scope="module")
def mesh_runs(tmp_path_factory):
  out = {}
  for name, extra in MESHES.items():
    wd = tmp_path_factory.mktemp(f"mesh{name}")
    loop.train(config("--config.total_steps=4", "--config.checkpoint.every_steps=2", *extra), wd)
    out[name] = wd
  return out


def test_meshes_give_the_same_losses_and_parameters(mesh_runs):
  ref = mesh_runs["1"]
  for name in ("8", "4x2"):
    a, b = losses(ref), losses(mesh_runs[name])
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    np.testing.assert_allclose([a[s] for s in a], [b[s] for s in a], atol=1e-5, rtol=0)
    assert_trees_close(params(ref), params(mesh_runs[name]), 1e-5)


def test_fsdp_really_shards_parameters(tmp_path):
  from sketchseg_jax.train import mesh as mesh_lib
  mesh = mesh_lib.make_mesh([("data", 4), ("fsdp", 2)])
  abstract = {"w": jax.ShapeDtypeStruct((32, 64), np.float32),
              "b": jax.ShapeDtypeStruct((3,), np.float32)}
  sh = mesh_lib.param_shardings(abstract, mesh, [(".*", "fsdp")])
  assert sh["w"].spec == jax.sharding.PartitionSpec(None, "fsdp")
  assert sh["b"].spec == jax.sharding.PartitionSpec()
  arr = jax.device_put(np.zeros((32, 64), np.float32), sh["w"])
  assert {s.data.shape for s in arr.addressable_shards} == {(32, 32)}


def test_the_trained_model_is_sharded_by_the_config_rules():
  """The same sharding function the loop applies, on the real stage's parameters."""
  from sketchseg_jax.train import mesh as mesh_lib
  from sketchseg_jax.train.stage import build
  cfg = config(*MESHES["4x2"])
  stage = build(cfg)
  mesh = mesh_lib.make_mesh(cfg.mesh)
  batch = {"image": jax.ShapeDtypeStruct((16, 32, 32, 3), np.uint8)}
  abstract = jax.eval_shape(stage.init, jax.random.key(0), batch)
  sh = mesh_lib.param_shardings(abstract, mesh, [tuple(r) for r in cfg.sharding.rules])
  fc1 = sh["backbone"]["encoder"]["layers_0"]["mlp"]["fc1"]["kernel"]
  assert fc1.spec == jax.sharding.PartitionSpec(None, "fsdp")  # (32, 64): the larger dim
  logical = config()  # the default rules: logical axes, 'mlp' -> 'model' on a model axis
  tp_mesh = mesh_lib.make_mesh([("data", 4), ("model", 2)])
  rules = mesh_lib.fit_logical_rules([tuple(r) for r in logical.sharding.logical], tp_mesh)
  sh = mesh_lib.param_shardings(abstract, tp_mesh, [(".*", "logical")], rules)
  assert sh["backbone"]["encoder"]["layers_0"]["mlp"]["fc1"]["kernel"].spec == \
      jax.sharding.PartitionSpec(None, "model")


def test_keep_last_and_keep_best(tmp_path):
  from sketchseg_jax.train.checkpoints import Checkpoints
  ck = Checkpoints(tmp_path, every_steps=1, keep_last=1, keep_best=1, best_metric="acc",
                   best_mode="max", async_save=False)
  for step, acc in [(1, 0.1), (2, 0.9), (3, 0.2), (4, 0.3)]:
    ck.save(step, {"w": np.full(3, step, np.float32)}, metrics={"acc": acc})
  ck.close()
  assert sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()) == [2, 4]


def test_checkpoint_restores_onto_other_meshes(mesh_runs, tmp_path):
  straight = tmp_path / "straight"
  loop.train(config("--config.total_steps=6", "--config.checkpoint.every_steps=2",
                    *MESHES["8"]), straight)
  for name in ("4x2", "1"):
    wd = tmp_path / f"resume{name}"
    import shutil
    shutil.copytree(mesh_runs["8"], wd)
    loop.train(config("--config.total_steps=6", "--config.checkpoint.every_steps=2",
                      *MESHES[name]), wd)
    assert_trees_close(params(straight), params(wd), 1e-5)
    np.testing.assert_allclose(losses(wd)[6], losses(straight)[6], atol=1e-5)


# ------------------------------------------------------------------ faults

def _train_cmd(workdir, *extra):
  return [sys.executable, "-m", "sketchseg_jax.cli", "train", "--config", f"{CONFIG}:runlocal",
          "--workdir", str(workdir), *FAST, *extra]


def _env(**extra):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  env.update(extra)
  return env


def _wait_for(predicate, proc, timeout=240):
  t0 = time.time()
  while time.time() - t0 < timeout:
    if predicate():
      return
    if proc.poll() is not None:
      raise AssertionError(f"trainer exited early: {proc.stderr.read()[-2000:]}")
    time.sleep(0.05)
  raise AssertionError("timed out")


def _checkpoint_steps(workdir):
  d = Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


def test_exact_resume_after_sigkill(tmp_path):
  steps = ["--config.total_steps=40", "--config.checkpoint.every_steps=4"]
  straight = tmp_path / "straight"
  subprocess.run(_train_cmd(straight, *steps), check=True, env=_env(), capture_output=True,
                 timeout=300)
  killed = tmp_path / "killed"
  proc = subprocess.Popen(_train_cmd(killed, *steps), env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  _wait_for(lambda: any(s >= 12 for s in _checkpoint_steps(killed)), proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_at = max(losses(killed))
  assert killed_at < 40
  subprocess.run(_train_cmd(killed, *steps), check=True, env=_env(), capture_output=True,
                 timeout=300)
  a, b = losses(straight), losses(killed)
  assert sorted(b) == list(range(1, 41))
  for s in range(1, 41):
    assert a[s] == b[s], f"step {s}: {a[s]} != {b[s]}"
  for x, y in zip(jax.tree.leaves(params(straight)), jax.tree.leaves(params(killed))):
    np.testing.assert_array_equal(x, y)


def test_sigterm_saves_the_current_step(tmp_path):
  proc = subprocess.Popen(_train_cmd(tmp_path, "--config.total_steps=100000",
                                     "--config.checkpoint.every_steps=1000"),
                          env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  _wait_for(lambda: (tmp_path / "metrics.jsonl").exists() and len(losses(tmp_path)) >= 3, proc)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-2000:]
  saved = _checkpoint_steps(tmp_path)
  assert len(saved) == 1 and 3 <= saved[0] < 1000
  assert f"SIGTERM: saved checkpoint at step {saved[0]}" in err


def test_damaged_latest_checkpoint_falls_back_with_a_warning(tmp_path, caplog):
  loop.train(config("--config.total_steps=6", "--config.checkpoint.every_steps=3"), tmp_path)
  assert _checkpoint_steps(tmp_path) == [3, 6]
  for f in (tmp_path / "checkpoints" / "6" / "state").rglob("*"):
    if f.is_file() and f.stat().st_size > 0:
      f.write_bytes(b"\0" * 7)
  with caplog.at_level(logging.WARNING):
    loop.train(config("--config.total_steps=8", "--config.checkpoint.every_steps=3"), tmp_path)
  text = caplog.text
  assert "checkpoints/6 is unreadable" in text and "resumed from checkpoint" in text
  assert sorted(losses(tmp_path)) == list(range(1, 9))


def test_non_finite_loss_stops_or_is_skipped(tmp_path):
  blowup = ["--config.optimizer.lr=1e30", "--config.optimizer.grad_clip_norm=0.0",
            "--config.total_steps=6"]
  with pytest.raises(loop.NonFiniteError, match=r"step \d: .*not finite"):
    loop.train(config(*blowup), tmp_path / "stop")
  last = loop.train(config(*blowup, "--config.nan_policy=skip"), tmp_path / "skip")
  assert last["skipped_updates"] >= 1


# ------------------------------------------------------------------ multi-host

TWO_PROCESS = """
import json, sys
from sketchseg_jax.train.config_lib import load_config
from sketchseg_jax.train.loop import train
cfg = load_config(sys.argv[1], sys.argv[3:])
print("RESULT " + json.dumps(train(cfg, sys.argv[2])), flush=True)
"""


def test_two_processes_train_together_and_agree(tmp_path):
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  procs = []
  for pid in range(2):
    env = _env(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
               JAX_PROCESS_ID=str(pid), XLA_FLAGS="--xla_force_host_platform_device_count=2")
    procs.append(subprocess.Popen(
        [sys.executable, "-c", TWO_PROCESS, f"{CONFIG}:runlocal", str(tmp_path), *FAST,
         "--config.total_steps=3", "--config.checkpoint.every_steps=3"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  results = []
  for p in procs:
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
    results.append(json.loads(out.split("RESULT ", 1)[1]))
  assert results[0]["loss"] == results[1]["loss"]
  assert sorted(losses(tmp_path)) == [1, 2, 3]  # only process 0 logs
  assert _checkpoint_steps(tmp_path) == [3]
