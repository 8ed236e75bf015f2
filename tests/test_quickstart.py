"""The quickstart chain end to end at smoke size: every stage trains, evaluates, reports and
exports; each stage workdir evaluates on its own; a second run resumes."""

import json

import pytest

from sketchseg_jax.cli import main

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("qs") / "run"
  rc = main(["train", "--config", f"{ROOT / 'configs' / 'quickstart.py'}:runlocal",
             "--workdir", str(workdir)])
  assert rc == 0
  return workdir


def test_layout(quickstart):
  for name in ("teacher", "distill", "segmenter", "supervised"):
    assert (quickstart / name / "config.json").exists()
    assert (quickstart / name / "eval" / "metrics.json").exists()
  assert json.loads((quickstart / "config.json").read_text())["stage"] == "chain"
  seg = json.loads((quickstart / "segmenter" / "eval" / "metrics.json").read_text())
  assert {"miou", "miou_best_threshold", "num_queries", "baselines"} <= set(seg)
  report = (quickstart / "report.md").read_text()
  assert "supervised upper bound" in report and "all-ones" in report and "Teacher" in report
  assert "keeps, 90% interval" in report
  assert (quickstart / "grid.png").exists()
  assert (quickstart / "export" / "sketchseg_torch.py").exists()


def test_stage_workdir_evaluates_without_config(quickstart, capsys):
  assert main(["eval", "--workdir", str(quickstart / "distill")]) == 0
  assert "keeps" in capsys.readouterr().out


def test_links_point_at_absolute_workdirs(quickstart):
  seg = json.loads((quickstart / "segmenter" / "config.json").read_text())
  assert seg["teacher"]["workdir"] == str((quickstart / "teacher").absolute())
  assert seg["teacher"]["kind"] == "teacher"
