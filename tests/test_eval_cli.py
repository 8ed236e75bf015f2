"""`sketchseg eval`: a small retrieval stage evaluated from a real orbax checkpoint."""

import json
import shutil
import textwrap

import ml_collections
import numpy as np
import pytest

from sketchseg_jax.cli import main
from sketchseg_jax.commands.eval import summary_lines
from sketchseg_jax.evaluate.retrieval import retrieval_metrics
from sketchseg_jax.train import stage as stage_lib
from sketchseg_jax.train.checkpoints import Checkpoints
from sketchseg_jax.train.config_lib import save_config

# Importable from a folder put on sys.path, as a stage registered by target string must be.
STAGE_MODULE = "sketchseg_eval_test_stages"
STAGE_SOURCE = '''
import numpy as np

from sketchseg_jax.evaluate.retrieval import retrieval_metrics
from sketchseg_jax.train.stage import Stage


def problem(seed, noise, size=12, dim=4):
  """Photos, sketches near their photos, and three categories."""
  rng = np.random.default_rng(seed)
  photos = rng.normal(size=(size, dim))
  sketches = photos + noise * rng.normal(size=(size, dim))
  return sketches, photos, np.arange(size) % 3


class RetrievalStage(Stage):
  """Sketch embedding = sketch @ params["proj"]; photos embed as themselves."""

  def eval_report(self, params, data=None):
    if data is None:
      sketches, photos, labels = problem(self.config.eval.seed, self.config.eval.noise)
    else:
      with np.load(data) as f:
        sketches, photos, labels = f["sketches"], f["photos"], f["labels"]
    query = sketches @ np.asarray(params["proj"])
    full = retrieval_metrics(query, photos, np.arange(len(photos)), labels, labels)
    return {"full": full, "info": {"data": data, "noise": self.config.eval.noise},
            "num_sets": np.int64(1), "unstable": float("nan"), "trace": params["proj"].trace()}


class NoEvalStage(Stage):
  pass


class ListStage(Stage):

  def eval_report(self, params, data=None):
    return [1, 2]
'''

CONFIG_FILE = '''
import ml_collections

def get_config(arg=None):
  return ml_collections.ConfigDict({"stage": "eval_test_retrieval",
                                    "eval": {"seed": 0, "noise": float(arg or 0.5)}})
'''


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A workdir with config.json and checkpoints at step 1 (proj = I) and 2 (proj = -I)."""
  root = tmp_path_factory.mktemp("eval_cli")
  (root / "modules").mkdir()
  (root / "modules" / f"{STAGE_MODULE}.py").write_text(textwrap.dedent(STAGE_SOURCE))
  (root / "config.py").write_text(textwrap.dedent(CONFIG_FILE))
  workdir = root / "workdir"
  save_config(ml_collections.ConfigDict({"stage": "eval_test_retrieval",
                                         "eval": {"seed": 0, "noise": 0.1}}), workdir)
  ck = Checkpoints(workdir / "checkpoints", every_steps=1, async_save=False)
  for step, sign in ((1, 1.0), (2, -1.0)):
    ck.save(step, {"params": {"proj": sign * np.eye(4, dtype=np.float32)},
                   "step": np.int32(step)})
  ck.close()
  return root


@pytest.fixture
def workdir(trained, tmp_path, monkeypatch):
  monkeypatch.syspath_prepend(str(trained / "modules"))
  for name, cls in (("eval_test_retrieval", "RetrievalStage"), ("eval_test_none", "NoEvalStage"),
                    ("eval_test_list", "ListStage")):
    monkeypatch.setitem(stage_lib.STAGES, name, f"{STAGE_MODULE}:{cls}")
  return shutil.copytree(trained / "workdir", tmp_path / "workdir")


def expected(proj_sign, noise, seed=0):
  rng = np.random.default_rng(seed)
  photos = rng.normal(size=(12, 4))
  sketches = photos + noise * rng.normal(size=(12, 4))
  labels = np.arange(12) % 3
  return retrieval_metrics(proj_sign * sketches, photos, np.arange(12), labels, labels)


def run_eval(capsys, *args):
  rc = main(["eval", *map(str, args)])
  out, err = capsys.readouterr()
  return rc, out, err


def read_metrics(workdir):
  return json.loads((workdir / "eval" / "metrics.json").read_text())


def test_eval_uses_the_newest_checkpoint_and_writes_metrics(workdir, capsys, caplog):
  rc, out, err = run_eval(capsys, "--workdir", workdir)
  assert rc == 0, err
  assert "read only" not in caplog.text  # orbax's notes about read-only managers are dropped
  metrics = read_metrics(workdir)
  want = expected(-1.0, 0.1)
  assert metrics["full"] == pytest.approx(want)
  assert metrics["full"]["acc@1"] < 0.5  # proj = -I sends sketches away from their photos
  assert metrics["info"] == {"data": None, "noise": 0.1}
  assert metrics["num_sets"] == 1 and metrics["unstable"] is None
  assert metrics["trace"] == -4.0  # a jax scalar from the restored parameters
  assert sorted(p.name for p in (workdir / "eval").iterdir()) == ["metrics.json"]
  lines = out.strip().splitlines()
  assert lines[0].startswith(f"full/acc@1={want['acc@1']:.4g} full/acc@5=")
  assert "full/gallery_size=12" in lines[0]
  assert "info/noise=0.1" in lines[1]
  assert lines[2] == "num_sets=1 unstable=None trace=-4"
  assert lines[-1] == f"wrote {workdir / 'eval' / 'metrics.json'} (checkpoint step 2)"


def test_step_picks_the_checkpoint(workdir, capsys):
  rc, out, err = run_eval(capsys, "--workdir", workdir, "--step", 1)
  assert rc == 0, err
  full = read_metrics(workdir)["full"]
  assert full == pytest.approx(expected(1.0, 0.1))
  assert full["acc@1"] == 1.0
  assert out.strip().endswith("(checkpoint step 1)")


def test_data_path_reaches_the_stage(workdir, tmp_path, capsys):
  rng = np.random.default_rng(5)
  photos = rng.normal(size=(7, 4))
  data = tmp_path / "other.npz"
  np.savez(data, sketches=photos, photos=photos, labels=np.arange(7))
  rc, _, err = run_eval(capsys, "--workdir", workdir, "--data", data, "--step", 1)
  assert rc == 0, err
  metrics = read_metrics(workdir)
  assert metrics["info"]["data"] == str(data)
  assert metrics["full"]["gallery_size"] == 7 and metrics["full"]["acc@1"] == 1.0


def test_overrides_apply_to_the_saved_config(workdir, capsys):
  rc, _, err = run_eval(capsys, "--workdir", workdir, "--config.eval.noise=2.0")
  assert rc == 0, err
  metrics = read_metrics(workdir)
  assert metrics["info"]["noise"] == 2.0
  assert metrics["full"] == pytest.approx(expected(-1.0, 2.0))


def test_config_file_with_arg_and_override_replaces_the_saved_one(workdir, trained, capsys):
  config = trained / "config.py"
  rc, _, err = run_eval(capsys, "--workdir", workdir, "--config", f"{config}:0.3", "--step", 1)
  assert rc == 0, err
  assert read_metrics(workdir)["info"]["noise"] == 0.3
  rc, _, err = run_eval(capsys, "--workdir", workdir, "--config", config,
                        "--config.eval.seed", "4", "--step", 1)
  assert rc == 0, err
  assert read_metrics(workdir)["full"] == pytest.approx(expected(1.0, 0.5, seed=4))


def one_line_error(capsys, *args):
  rc, out, err = run_eval(capsys, *args)
  assert rc == 2
  assert len(err.strip().splitlines()) == 1 and err.startswith("sketchseg eval: error: "), err
  return err


def test_workdir_without_config(tmp_path, capsys):
  assert "holds no config.json" in one_line_error(capsys, "--workdir", tmp_path)


def test_missing_workdir(tmp_path, capsys):
  assert "does not exist" in one_line_error(capsys, "--workdir", tmp_path / "nope")


def test_workdir_without_checkpoints(workdir, capsys):
  shutil.rmtree(workdir / "checkpoints")
  assert "no checkpoints folder" in one_line_error(capsys, "--workdir", workdir)
  assert not (workdir / "eval").exists()


def test_missing_step(workdir, capsys):
  err = one_line_error(capsys, "--workdir", workdir, "--step", 7)
  assert "no checkpoint for step 7; steps: [1, 2]" in err


def test_stage_without_evaluation(workdir, capsys):
  err = one_line_error(capsys, "--workdir", workdir, "--config.stage=eval_test_none")
  assert "stage 'eval_test_none' has no evaluation report" in err


def test_report_that_is_not_a_dict(workdir, capsys):
  err = one_line_error(capsys, "--workdir", workdir, "--config.stage=eval_test_list")
  assert "returned a list" in err
  assert not (workdir / "eval" / "metrics.json").exists()


def test_unknown_override_and_unknown_stage(workdir, capsys):
  assert "no such key" in one_line_error(capsys, "--workdir", workdir, "--config.eval.nope=1")
  assert "unknown stage 'other'" in one_line_error(capsys, "--workdir", workdir,
                                                    "--config.stage=other")


def test_summary_lines_flatten_nested_groups():
  report = {"full": {"acc@1": 0.53125, "sub": {"n": 3}}, "curve": {"iou": [0.1, 0.2]},
            "miou": 0.25, "baselines": {}}
  assert summary_lines(report) == ["full/acc@1=0.5312", "full/sub/n=3", "curve/iou=[2 values]",
                                   "miou=0.25"]
