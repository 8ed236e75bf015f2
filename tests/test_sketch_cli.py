"""`sketchseg sketch show`: contact sheets from hand-written sketch files, and clean failures."""

import json

import numpy as np
import pytest
from PIL import Image

from sketchseg_jax.cli import main

SVG = """<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="100" height="100" viewBox="0 0 100 100">
  <g fill="none" stroke="black" stroke-width="2">
    <path d="M 10 10 L 70 10 L 70 40"/>
    <polyline points="15,60 45,60 45,90"/>
  </g>
</svg>
"""

DRAWING = {"word": "cat", "countrycode": "GB", "timestamp": "2017-03-01 20:41:36.70725 UTC",
           "recognized": True, "key_id": "5152802093400064",
           "drawing": [[[0, 120, 255], [0, 60, 255]], [[30, 220], [220, 30]]]}


@pytest.fixture
def files(tmp_path):
  svg = tmp_path / "house.svg"
  svg.write_text(SVG)
  nd = tmp_path / "cat.ndjson"
  nd.write_text(json.dumps(DRAWING) + "\n")
  return str(svg), str(nd)


def cell_box(row, col, cell):
  # Geometry of the sheet: 4 px padding, a 14 px caption strip under each cell.
  x, y = 4 + col * (cell + 4), 4 + row * (cell + 14 + 4)
  return x, y, x + cell, y + cell


def test_show_writes_a_grid_of_rows_by_columns(files, tmp_path, capsys):
  out = tmp_path / "sheet.png"
  rc = main(["sketch", "show", *files, "--aug", "partition", "hflip", "--seeds", "2",
             "--cell", "64", "--out", str(out)])
  assert rc == 0
  sheet = np.asarray(Image.open(out).convert("L")).astype(np.float32)
  # 2 rows (files) x 5 columns (original + 2 augmentations x 2 seeds).
  assert sheet.shape == (4 + 2 * (64 + 14 + 4), 4 + 5 * (64 + 4))
  assert "2 x 5 cells" in capsys.readouterr().out
  for row in range(2):
    x0, y0, x1, y1 = cell_box(row, 0, 64)
    original = sheet[y0:y1, x0:x1]
    assert (original < 100).sum() > 40  # strokes are drawn
    # hflip (columns 3 and 4) is the original mirrored, pixel for pixel up to rounding.
    x0, y0, x1, y1 = cell_box(row, 3, 64)
    flipped = sheet[y0:y1, x0:x1]
    assert np.abs(flipped[:, ::-1] - original).mean() < 2.0
    # Captions are written under the cells.
    assert (sheet[y1:y1 + 14, x0:x1] < 128).any()
  # The SVG's strokes sit in its top-left part: the original cell shows ink there only.
  x0, y0, x1, y1 = cell_box(0, 0, 64)
  original = sheet[y0:y1, x0:x1]
  assert (original[2:62, 2:50] < 100).any() and not (original[2:62, 52:62] < 100).any()


def test_show_with_parameters_group_and_a_raster_file(files, tmp_path):
  png = tmp_path / "scribble.png"
  img = np.full((40, 40), 255, np.uint8)
  img[10:30, 19:21] = 0
  Image.fromarray(img).save(png)
  out = tmp_path / "sheet2.png"
  rc = main(["sketch", "show", *files, str(png), "--aug", "partition:mode=box,area=(0.2,0.5)",
             "--aug", "group:query='separate'", "--seeds", "1", "--cell", "48",
             "--out", str(out)])
  assert rc == 0
  assert Image.open(out).size == (4 + 3 * (48 + 4), 4 + 3 * (48 + 14 + 4))


@pytest.mark.parametrize("content,expect", [
    ("<svg xmlns='http://www.w3.org/2000/svg'><path d='M 1 1 X 3 3'/></svg>", "bad.svg"),
    ("<svg><path d='M 1 1 L", "bad.svg"),
])
def test_a_bad_file_exits_2_with_one_line(tmp_path, capsys, content, expect):
  bad = tmp_path / "bad.svg"
  bad.write_text(content)
  rc = main(["sketch", "show", str(bad), "--out", str(tmp_path / "s.png")])
  assert rc == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and err.startswith("sketchseg sketch: error:")
  assert expect in err
  assert not (tmp_path / "s.png").exists()


def test_missing_file_and_unknown_augmentation_exit_2(files, tmp_path, capsys):
  assert main(["sketch", "show", str(tmp_path / "nope.svg"), "--out",
               str(tmp_path / "s.png")]) == 2
  assert "nope.svg" in capsys.readouterr().err
  assert main(["sketch", "show", files[0], "--aug", "wobble", "--out",
               str(tmp_path / "s.png")]) == 2
  err = capsys.readouterr().err
  assert "wobble" in err and len(err.strip().splitlines()) == 1
  assert main(["sketch", "show", files[0], "--aug", "affine:spin=3", "--out",
               str(tmp_path / "s.png")]) == 2
  assert "spin" in capsys.readouterr().err
