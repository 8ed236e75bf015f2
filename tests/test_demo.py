"""`sketchseg demo`: the JSON API over real HTTP, and the page in a real headless Chromium.

The browser test needs Debian's chromium and chromedriver (`apt-get install -y chromium
chromium-driver`) and the selenium client (requirements-test.txt); without them it skips.
"""

import base64
import io
import json
import os
import shutil
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from segmenter_helpers import train_tiny
from sketchseg_jax.cli import build_parser, main
from sketchseg_jax.infer import demo
from sketchseg_jax.infer.predictor import Predictor
from sketchseg_jax.sketch import Sketch

# Small limits, so the refusals are tested with small files.
LIMITS = demo.Limits(max_upload_bytes=200_000, max_side=600, max_pixels=200_000,
                     max_json_bytes=50_000, max_strokes=20, max_points=2_000, max_sketches=4,
                     cached_photos=2)
STROKES = [[[40, 40], [200, 60], [300, 200]], [[100, 300], [250, 350], [400, 420]]]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  return train_tiny(tmp_path_factory.mktemp("demo") / "seg")


@pytest.fixture(scope="module")
def server(workdir):
  server = demo.make_server(Predictor.from_checkpoint(workdir), port=0, limits=LIMITS)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  yield server
  server.shutdown()
  server.server_close()


def call(server, path, data=None, headers=None, method=None):
  """(status, headers, parsed JSON or raw bytes) of one request."""
  request = urllib.request.Request(server.url.rstrip("/") + path, data=data,
                                   headers=headers or {}, method=method)
  try:
    with urllib.request.urlopen(request, timeout=30) as r:
      status, head, body = r.status, r.headers, r.read()
  except urllib.error.HTTPError as e:
    status, head, body = e.code, e.headers, e.read()
  if head.get("Content-Type", "").startswith("application/json"):
    body = json.loads(body)
  return status, head, body


def post_json(server, path, obj):
  return call(server, path, json.dumps(obj).encode(), {"Content-Type": "application/json"})


def png_bytes(array) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format="PNG")
  return buf.getvalue()


def decode_data_url(url: str) -> np.ndarray:
  prefix = "data:image/png;base64,"
  assert url.startswith(prefix)
  return np.asarray(Image.open(io.BytesIO(base64.b64decode(url[len(prefix):]))))


def multipart(field: str, filename: str, data: bytes) -> tuple:
  boundary = "----sketchsegtestboundary"
  body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; "
          f"filename=\"{filename}\"\r\nContent-Type: image/png\r\n\r\n").encode() + data + \
      f"\r\n--{boundary}--\r\n".encode()
  return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


# ------------------------------------------------------------------------------ the API

def test_page_and_info(server):
  status, head, body = call(server, "/")
  assert status == 200 and head["Content-Type"].startswith("text/html")
  assert b"<canvas" in body
  # Nothing fetched from elsewhere: no script, style or font files, no absolute URLs.
  assert not any(word in body for word in (b"<script src", b"<link", b"@import", b"://"))
  assert "default-src 'none'" in head["Content-Security-Policy"]
  status, _, info = call(server, "/api/info")
  assert status == 200 and info["image_size"] == 32 and info["step"] == 2
  assert info["limits"]["max_upload_bytes"] == LIMITS.max_upload_bytes
  assert server.url.startswith("http://127.0.0.1:")


def test_upload_raw_and_multipart(server):
  photo = np.random.default_rng(0).integers(0, 256, (90, 140, 3), dtype=np.uint8)
  data = png_bytes(photo)
  status, _, raw = call(server, "/api/image", data, {"Content-Type": "image/png",
                                                     "X-Filename": "cat%20photo.png"})
  assert status == 200, raw
  assert (raw["width"], raw["height"], raw["name"]) == (140, 90, "cat photo.png")
  shown = decode_data_url(raw["photo"])
  assert shown.shape == (*demo.display_size(90, 140), 3) and min(shown.shape[:2]) == 256
  body, headers = multipart("file", "p.png", data)
  status, _, form = call(server, "/api/image", body, headers)
  assert status == 200, form
  assert form["id"] == raw["id"] and form["name"] == "p.png"


@pytest.mark.parametrize("data, status, words", [
    (b"this is not a picture\n", 415, "not a photo"),
    (b"", 415, "empty"),
    (png_bytes(np.zeros((40, 40, 3), np.uint8))[:60], 415, "corrupt"),
    (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", 415, "not a photo"),
    (png_bytes(np.zeros((10, 601), np.uint8)), 413, "601x10"),           # a side too long
    (png_bytes(np.zeros((450, 450), np.uint8)), 413, "megapixels"),      # too many pixels
    (os.urandom(LIMITS.max_upload_bytes + 1), 413, "over the limit"),    # too many bytes
])
def test_upload_refusals(server, data, status, words):
  got, head, body = call(server, "/api/image", data, {"Content-Type": "image/png"})
  assert got == status, body
  assert head["Content-Type"].startswith("application/json") and words in body["error"]


def test_world_photo(server):
  status, _, world = call(server, "/api/world?index=3")
  assert status == 200 and world["id"] == "world-3" and world["width"] == 256
  for bad in ("100", "-1", "abc"):
    status, _, body = call(server, f"/api/world?index={bad}")
    assert status == 400 and "index" in body["error"]


def test_segment_matches_predictor(server, workdir):
  """One sketch, then two as a group: the coverage is the Predictor's own mask's."""
  status, _, world = call(server, "/api/world?index=5")
  assert status == 200
  status, _, one = post_json(server, "/api/segment", {
      "image": world["id"], "strokes": STROKES, "canvas": [512, 512], "groups": None,
      "threshold": 0.5})
  assert status == 200, one
  picture = decode_data_url(one["overlay"])
  assert picture.shape == (256, 256, 3) and one["sketches"] == 1
  status, _, two = post_json(server, "/api/segment", {
      "image": world["id"], "strokes": STROKES, "canvas": [512, 512], "groups": [[0], [1]],
      "threshold": 0.3})
  assert status == 200 and two["sketches"] == 2

  # A Predictor of its own: the server's holds the server's photo.
  from sketchseg_jax.data.sources import build_source
  reference = Predictor.from_checkpoint(workdir)
  reference.set_image(build_source({"name": "world", "kind": "query", "split": "val",
                                    "num": 100, "size": 256})[5]["image"])
  whole = Sketch([np.array(s, np.float32) for s in STROKES], (512, 512))
  assert one["coverage"] == pytest.approx(reference.segment(whole, threshold=0.5).mean())
  parts = [whole.select([0]), whole.select([1])]
  assert two["coverage"] == pytest.approx(reference.segment(parts, threshold=0.3).mean())


@pytest.mark.parametrize("change, words", [
    ({"strokes": []}, "draw something"),
    ({"strokes": "x"}, "'strokes'"),
    ({"strokes": [[[1, 2, 3]]]}, "[x, y]"),
    ({"strokes": [[[1, True]]]}, "number"),
    ({"strokes": [[[0, 0]]] * 21}, "limit"),
    ({"canvas": [0, 10]}, "canvas"),
    ({"canvas": None}, "canvas"),
    ({"groups": [[0], [2]]}, "stroke index"),
    ({"groups": []}, "groups"),
    ({"groups": [[0]] * 5}, "limit"),
    ({"threshold": 1.5}, "threshold"),
    ({"image": None}, "'image'"),
    ({"strokes": [[[900, 900], [950, 990]]]}, "no stroke lies inside"),
])
def test_segment_bad_requests(server, change, words):
  status, _, world = call(server, "/api/world?index=1")
  request = {"image": world["id"], "strokes": STROKES, "canvas": [512, 512], **change}
  status, _, body = post_json(server, "/api/segment", request)
  assert status == 400 and words in body["error"], body


def test_http_errors_are_json(server):
  cases = [
      (dict(path="/api/segment", data=b"{not json", headers={}), 400, "JSON"),
      (dict(path="/api/segment", data=b'{"strokes": [[[NaN, 1]]]}', headers={}), 400, "JSON"),
      (dict(path="/api/segment", data=b"[1, 2]", headers={}), 400, "object"),
      (dict(path="/api/segment", data=b"x" * (LIMITS.max_json_bytes + 1), headers={}), 413,
       "limit"),
      (dict(path="/api/segment", data=json.dumps(
          {"image": "nope", "strokes": STROKES, "canvas": [9, 9]}).encode(), headers={}), 404,
       "no photo"),
      (dict(path="/api/segment"), 405, "POST"),
      (dict(path="/nothing"), 404, "no such page"),
      (dict(path="/", method="PUT"), 501, "PUT"),
      (dict(path="/api/info", headers={"Host": "attacker.example"}), 403, "localhost"),
      (dict(path="/api/world?index=0", headers={"Origin": "http://attacker.example"}), 403,
       "cross-origin"),
  ]
  for kwargs, status, words in cases:
    got, head, body = call(server, **kwargs)
    assert got == status, (kwargs, body)
    assert head["Content-Type"].startswith("application/json"), kwargs
    assert words in body["error"], (kwargs, body)


def test_photo_cache_evicts(server):
  ids = [call(server, f"/api/world?index={i}")[2]["id"] for i in (10, 11, 12)]
  status, _, body = post_json(server, "/api/segment", {"image": ids[0], "strokes": STROKES,
                                                       "canvas": [512, 512]})
  assert status == 404 and "load the photo again" in body["error"]
  assert post_json(server, "/api/segment", {"image": ids[2], "strokes": STROKES,
                                            "canvas": [512, 512]})[0] == 200


def test_display_size():
  assert demo.display_size(32, 32) == (256, 256)
  assert demo.display_size(3000, 1000) == (768, 256)
  assert demo.display_size(10, 2000) == (4, 768)     # a strip stays within the long-side cap
  assert demo.display_size(400, 600) == (400, 600)


def test_command_line(workdir, capsys, monkeypatch):
  args = build_parser().parse_args(["demo", "--checkpoint", str(workdir)])
  assert (args.host, args.port, args.no_browser) == ("127.0.0.1", 8765, False)
  assert main(["demo", "--checkpoint", str(workdir / "missing"), "--no-browser"]) == 2
  assert "does not exist" in capsys.readouterr().err
  assert main(["demo", "--checkpoint", str(workdir), "--port", "70000"]) == 2
  assert "--port" in capsys.readouterr().err

  # The whole command, up to serving: Ctrl-C arrives as soon as it would serve.
  seen = []

  def interrupted(self, *args, **kwargs):
    seen.append((self.url, self.app.predictor.is_image_set))
    raise KeyboardInterrupt

  monkeypatch.setattr(demo.DemoServer, "serve_forever", interrupted)
  assert main(["demo", "--checkpoint", str(workdir), "--port", "0", "--no-browser"]) == 0
  out = capsys.readouterr().out
  (url, warmed), = seen
  assert warmed and f"sketchseg demo: {url}" in out and url.startswith("http://127.0.0.1:")


def test_port_in_use(workdir, server):
  port = server.server_address[1]
  with pytest.raises(demo.UserError, match="pick another --port"):
    demo.make_server(server.app.predictor, port=port)


# ------------------------------------------------------------------------------ the browser

def _chromium():
  """(chromium, chromedriver) paths, or a skip naming what to install."""
  pytest.importorskip("selenium", reason="the selenium client is not installed "
                                         "(pip install -r requirements-test.txt)")
  browser = shutil.which("chromium") or ("/usr/bin/chromium"
                                         if os.path.exists("/usr/bin/chromium") else None)
  driver = shutil.which("chromedriver") or ("/usr/bin/chromedriver"
                                            if os.path.exists("/usr/bin/chromedriver") else None)
  if not browser or not driver:
    pytest.skip("no chromium/chromedriver here; install them with "
                "`apt-get install -y chromium chromium-driver`")
  return browser, driver


def _drag(driver, pad, points, kind="mouse"):
  """One stroke with real pointer events: press at points[0], move through the rest, lift.
  Points are in CSS pixels from the canvas's top-left corner."""
  from selenium.webdriver.common.actions import interaction
  from selenium.webdriver.common.actions.action_builder import ActionBuilder
  from selenium.webdriver.common.actions.pointer_input import PointerInput
  kinds = {"mouse": interaction.POINTER_MOUSE, "pen": interaction.POINTER_PEN,
           "touch": interaction.POINTER_TOUCH}
  pointer = PointerInput(kinds[kind], kind)
  actions = ActionBuilder(driver, mouse=pointer, duration=30)
  box = pad.rect  # the canvas's offset from the page's origin
  x, y = points[0]
  actions.pointer_action.move_to_location(int(box["x"] + x), int(box["y"] + y))
  actions.pointer_action.pointer_down()
  for x, y in points[1:]:
    actions.pointer_action.move_to_location(int(box["x"] + x), int(box["y"] + y))
  actions.pointer_action.pointer_up()
  actions.perform()


def test_page_in_headless_chromium(server, tmp_path):
  browser, chromedriver = _chromium()
  from selenium import webdriver
  from selenium.webdriver.chrome.service import Service
  from selenium.webdriver.common.by import By
  from selenium.webdriver.common.keys import Keys
  from selenium.webdriver.support.ui import WebDriverWait

  options = webdriver.ChromeOptions()
  options.binary_location = browser
  for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
               "--window-size=1280,900", "--force-device-scale-factor=1",
               f"--user-data-dir={tmp_path / 'profile'}"):
    options.add_argument(flag)
  options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
  driver = webdriver.Chrome(options=options, service=Service(chromedriver))
  try:
    wait = WebDriverWait(driver, 20)
    driver.get(server.url)
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
    view = driver.find_element(By.ID, "view")
    pad = driver.find_element(By.ID, "pad")

    index = driver.find_element(By.ID, "world-index")
    index.clear()
    index.send_keys("7")
    driver.find_element(By.ID, "world").click()
    wait.until(lambda d: view.get_attribute("data-showing") == "photo")
    assert "world photo 7" in driver.find_element(By.ID, "photo-name").text
    photo_src = view.get_attribute("src")
    # The tiny model is barely trained (its probabilities stay under 0.2): the lowest
    # threshold, set from the keyboard like a person would, makes its mask visible.
    driver.find_element(By.ID, "threshold").send_keys(Keys.HOME)
    assert driver.find_element(By.ID, "threshold-value").text == "0.05"

    _drag(driver, pad, [(60, 60), (150, 80), (260, 160), (300, 260)])
    wait.until(lambda d: view.get_attribute("data-strokes") == "1")
    assert view.get_attribute("data-showing") == "overlay"
    first = view.get_attribute("src")
    assert first != photo_src

    # A second sketch of the same query, drawn with a pen, in group mode.
    driver.find_element(By.ID, "group").click()
    driver.find_element(By.ID, "next").click()
    _drag(driver, pad, [(120, 380), (240, 420), (380, 400), (440, 300)], kind="pen")
    wait.until(lambda d: view.get_attribute("data-strokes") == "2")
    assert "2 sketches" in driver.find_element(By.ID, "timing").text
    coverage = driver.find_element(By.ID, "coverage").text
    assert coverage.startswith("mask: ") and coverage.endswith("% of the photo")
    assert float(coverage.split()[1].rstrip("%")) > 0
    assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth",
                                 view) == 256
    assert int(view.get_attribute("data-updates")) >= 2
    assert driver.find_element(By.ID, "error").text == ""
    # The canvas holds ink in both sketches' colours: the strokes were drawn where they went.
    ink = driver.execute_script(
        "const c = arguments[0], d = c.getContext('2d').getImageData(0, 0, c.width, c.height)"
        ".data; let black = 0, red = 0; for (let i = 0; i < d.length; i += 4) {"
        " if (d[i] < 60 && d[i + 1] < 60) black++; if (d[i] > 150 && d[i + 1] < 90) red++; }"
        " return [black, red];", pad)
    assert ink[0] > 100 and ink[1] > 100, ink

    shot = tmp_path / "demo.png"
    driver.save_screenshot(str(shot))
    artifacts = os.environ.get("SKETCHSEG_ARTIFACTS")
    if artifacts:
      os.makedirs(artifacts, exist_ok=True)
      shutil.copy(shot, os.path.join(artifacts, "demo.png"))

    driver.find_element(By.ID, "undo").click()
    wait.until(lambda d: view.get_attribute("data-strokes") == "1")
    _drag(driver, pad, [(100, 200), (200, 260), (330, 240)], kind="touch")
    wait.until(lambda d: view.get_attribute("data-strokes") == "2")
    driver.find_element(By.ID, "clear").click()
    wait.until(lambda d: view.get_attribute("data-showing") == "photo")
    assert driver.find_element(By.ID, "coverage").text == "draw on the canvas"

    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
  finally:
    driver.quit()
  assert Image.open(shot).size[0] >= 1100
