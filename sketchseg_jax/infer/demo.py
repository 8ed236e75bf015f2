"""The sketch-and-see web page behind `sketchseg demo`: a standard-library HTTP server.

  server = make_server(Predictor.from_checkpoint("runs/seg"), port=0)
  print(server.url); server.serve_forever()

One page (demo_page.html, vanilla JS, nothing fetched from elsewhere) and a small JSON API:

  GET  /                    the page
  GET  /api/info            the model's sizes, the checkpoint step and the upload limits
  POST /api/image           a photo: raw bytes, or multipart/form-data (the first file part)
  GET  /api/world?index=N   photo N of the procedural world (validation split)
  POST /api/segment         {"image": id, "strokes": [[[x, y], ...], ...], "canvas": [w, h],
                             "groups": [[stroke indices], ...] or null, "threshold": t}

Photos answer {"id", "name", "width", "height", "photo": PNG data URL}; a segmentation
answers {"overlay": PNG data URL, "coverage": fraction of the photo at the threshold,
"sketches", "width", "height", "ms"}. With "groups" null all strokes are one sketch; with
groups each group is a separate sketch of the same query and the mask is the max of theirs.

The photo is shown, and the mask drawn, at a display size (the long side at most
DISPLAY_MAX, the short side scaled up to DISPLAY_MIN where that fits): the model's
low-resolution logits are upsampled straight to it, so a 16-megapixel upload costs the same
per stroke as a thumbnail. Coverage is measured at that size.

Safety: binds 127.0.0.1 unless told otherwise, and then answers only requests whose Host is
a loopback name (DNS rebinding) and whose Origin, when sent, is the page's own. Uploads are
capped in bytes (413), decoded only by PIL's plugins for common photo formats (415 for
anything else, or damaged files) and capped in width, height and pixels before decoding (413).
Every error is JSON {"error": message} with a 4xx status (5xx only for a bug, logged here).
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import email.parser
import email.policy
import hashlib
import io
import ipaddress
import json
import logging
import math
import struct
import threading
import time
import urllib.parse
import warnings
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import numpy as np

from sketchseg_jax.errors import UserError

log = logging.getLogger(__name__)

DISPLAY_MAX = 768
DISPLAY_MIN = 256
# PIL plugins allowed to decode uploads: the common photo formats. Others (EPS runs
# Ghostscript, for one) are attack surface a photo upload does not need.
PHOTO_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "PPM")
WORLD_PHOTOS = 100
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclasses.dataclass(frozen=True)
class Limits:
  """What one request may ask of the server."""
  max_upload_bytes: int = 10 * 1024 * 1024
  max_side: int = 4096
  max_pixels: int = 16_000_000
  max_json_bytes: int = 2 * 1024 * 1024
  max_strokes: int = 1000
  max_points: int = 100_000
  max_sketches: int = 32
  cached_photos: int = 8


class ApiError(UserError):
  """A request the API refuses: `status` is the HTTP status to answer with."""

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = int(status)


@dataclasses.dataclass(frozen=True)
class Photo:
  """An accepted photo: what the model sees and what the page shows."""
  name: str
  size: tuple            # (H, W) as uploaded
  model_input: np.ndarray  # (S, S, 3) uint8 at the model's image size
  display: np.ndarray      # (h, w, 3) uint8 at the display size


def display_size(height: int, width: int) -> tuple:
  """(h, w) the page shows a photo at: long side <= DISPLAY_MAX, short side >= DISPLAY_MIN
  where that does not break the first rule; aspect kept."""
  scale = 1.0
  if max(height, width) > DISPLAY_MAX:
    scale = DISPLAY_MAX / max(height, width)
  elif min(height, width) < DISPLAY_MIN:
    scale = min(DISPLAY_MIN / min(height, width), DISPLAY_MAX / max(height, width))
  return max(1, round(height * scale)), max(1, round(width * scale))


def png_data_url(array: np.ndarray) -> str:
  from PIL import Image
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format="PNG")
  return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def decode_photo(data: bytes, limits: Limits = Limits()) -> np.ndarray:
  """Upload bytes -> (H, W, 3) uint8 RGB (EXIF orientation applied, first frame), or ApiError:
  415 for what is not a readable photo, 413 for one over the size limits."""
  from PIL import Image, ImageOps, UnidentifiedImageError
  if len(data) > limits.max_upload_bytes:
    raise ApiError(413, f"the upload is {len(data)} bytes, over the limit of "
                        f"{limits.max_upload_bytes} bytes")
  if not data:
    raise ApiError(415, "the upload is empty; send a photo (PNG, JPEG, WebP, ...)")
  formats = ", ".join(PHOTO_FORMATS)
  with warnings.catch_warnings():
    # Our own limits are lower than PIL's bomb warning; they are checked before decoding.
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    try:
      with Image.open(io.BytesIO(data), formats=PHOTO_FORMATS) as im:
        _check_dimensions(im.width, im.height, limits)
        im.verify()
      with Image.open(io.BytesIO(data), formats=PHOTO_FORMATS) as im:
        im = ImageOps.exif_transpose(im)
        return np.asarray(im.convert("RGB"))
    except ApiError:
      raise
    except UnidentifiedImageError:
      raise ApiError(415, f"not a photo: the upload is none of {formats}") from None
    except Image.DecompressionBombError:
      raise ApiError(413, "the photo has too many pixels") from None
    # Damaged files surface as any of these, depending on the decoder and the damage.
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, KeyError, TypeError,
            ZeroDivisionError, MemoryError, struct.error) as e:
      text = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
      raise ApiError(415, f"corrupt or unsupported photo ({text})") from None


def _check_dimensions(width: int, height: int, limits: Limits):
  if width < 1 or height < 1:
    raise ApiError(415, f"the photo is empty ({width}x{height})")
  if max(width, height) > limits.max_side or width * height > limits.max_pixels:
    raise ApiError(413, f"the photo is {width}x{height}; the limit is {limits.max_side} pixels "
                        f"a side and {limits.max_pixels / 1e6:g} megapixels")


# ------------------------------------------------------------------------------ requests

def _number(value, where: str) -> float:
  # bool is an int in Python, but `true` is no coordinate.
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise ApiError(400, f"{where} must be a number, got {json.dumps(value)[:40]}")
  value = float(value)
  if not math.isfinite(value):
    raise ApiError(400, f"{where} must be finite")
  return value


def parse_strokes(value, limits: Limits) -> list:
  """JSON strokes -> a list of (N, 2) float32 arrays."""
  if not isinstance(value, list):
    raise ApiError(400, "'strokes' must be a list of strokes, each a list of [x, y] points")
  if not value:
    raise ApiError(400, "no strokes: draw something first")
  if len(value) > limits.max_strokes:
    raise ApiError(400, f"{len(value)} strokes is over the limit of {limits.max_strokes}")
  total = sum(len(s) if isinstance(s, list) else 0 for s in value)
  if total > limits.max_points:
    raise ApiError(400, f"{total} points is over the limit of {limits.max_points}")
  strokes = []
  for i, stroke in enumerate(value):
    if not isinstance(stroke, list) or not stroke:
      raise ApiError(400, f"stroke {i} must be a non-empty list of [x, y] points")
    points = []
    for point in stroke:
      if not isinstance(point, list) or len(point) != 2:
        raise ApiError(400, f"stroke {i}: each point must be [x, y], got "
                            f"{json.dumps(point)[:40]}")
      points.append((_number(point[0], f"stroke {i}: x"), _number(point[1], f"stroke {i}: y")))
    strokes.append(np.asarray(points, np.float32))
  return strokes


def parse_canvas(value) -> tuple:
  if not isinstance(value, list) or len(value) != 2:
    raise ApiError(400, "'canvas' must be [width, height]")
  w, h = (_number(v, "canvas size") for v in value)
  if not (0 < w <= 100_000 and 0 < h <= 100_000):
    raise ApiError(400, f"canvas size must be positive (and at most 100000), got {w:g}x{h:g}")
  return w, h


def parse_groups(value, num_strokes: int, limits: Limits) -> list:
  """null -> one sketch of all strokes; else a list of non-empty lists of stroke indices."""
  if value is None:
    return [list(range(num_strokes))]
  if not isinstance(value, list) or not value:
    raise ApiError(400, "'groups' must be null or a non-empty list of lists of stroke indices")
  if len(value) > limits.max_sketches:
    raise ApiError(400, f"{len(value)} sketches is over the limit of {limits.max_sketches}")
  groups = []
  for g, group in enumerate(value):
    if not isinstance(group, list) or not group:
      raise ApiError(400, f"group {g} must be a non-empty list of stroke indices")
    for i in group:
      if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < num_strokes:
        raise ApiError(400, f"group {g}: {json.dumps(i)[:20]} is not a stroke index "
                            f"(0..{num_strokes - 1})")
    groups.append(list(group))
  return groups


def parse_threshold(value) -> float:
  if value is None:
    return 0.5
  t = _number(value, "'threshold'")
  if not 0.0 < t < 1.0:
    raise ApiError(400, f"'threshold' must be between 0 and 1 (exclusive), got {t:g}")
  return t


def _reject_constant(name):
  raise ValueError(f"{name} is not valid JSON")


# ------------------------------------------------------------------------------ the app

class DemoApp:
  """The API without HTTP: photos in a small cache, one Predictor behind a lock."""

  def __init__(self, predictor, limits: Limits = Limits()):
    self.predictor = predictor
    self.limits = limits
    self._photos = collections.OrderedDict()  # id -> Photo, least recently used first
    self._current = None  # id of the photo whose features the predictor holds
    # set_image then segment must not interleave with another request's set_image.
    self._lock = threading.Lock()
    self._world = None

  def info(self) -> dict:
    p = self.predictor
    return {"image_size": p.image_size, "raster_size": p.raster_size,
            "step": getattr(p, "step", None), "world_photos": WORLD_PHOTOS,
            "limits": dataclasses.asdict(self.limits)}

  def _photo_answer(self, key: str, photo: Photo) -> dict:
    h, w = photo.size
    return {"id": key, "name": photo.name, "width": w, "height": h,
            "photo": png_data_url(photo.display)}

  def _add(self, key: str, name: str, pixels: np.ndarray) -> dict:
    from PIL import Image

    from sketchseg_jax.infer.predictor import resize_photo
    h, w = pixels.shape[:2]
    dh, dw = display_size(h, w)
    display = pixels if (dh, dw) == (h, w) else np.asarray(
        Image.fromarray(pixels).resize((dw, dh), Image.BILINEAR))
    photo = Photo(name, (h, w), resize_photo(pixels, self.predictor.image_size), display)
    with self._lock:
      self._photos[key] = photo
      self._photos.move_to_end(key)
      while len(self._photos) > self.limits.cached_photos:
        self._photos.popitem(last=False)
      # The backbone runs now, so the first stroke costs only the sketch tower and head.
      self._select(key, photo)
    return self._photo_answer(key, photo)

  def _select(self, key: str, photo: Photo):
    if self._current != key:
      self._current = None
      self.predictor.set_image(photo.model_input)
      self._current = key

  def add_upload(self, data: bytes, name: str = "upload") -> dict:
    pixels = decode_photo(data, self.limits)
    key = "u" + hashlib.blake2b(data, digest_size=10).hexdigest()
    return self._add(key, name[:80] or "upload", pixels)

  def world_photo(self, index) -> dict:
    try:
      index = int(index)
    except (TypeError, ValueError):
      raise ApiError(400, f"world photo index must be an integer, got {str(index)[:20]!r}") \
          from None
    if not 0 <= index < WORLD_PHOTOS:
      raise ApiError(400, f"world photo index must be in 0..{WORLD_PHOTOS - 1}, got {index}")
    with self._lock:
      if self._world is None:
        from sketchseg_jax.data.sources import build_source
        self._world = build_source({"name": "world", "kind": "query", "split": "val",
                                    "num": WORLD_PHOTOS, "size": 256})
      image = np.asarray(self._world[index]["image"], np.uint8)
    return self._add(f"world-{index}", f"world photo {index}", image)

  def segment(self, payload) -> dict:
    from sketchseg_jax.infer import render
    from sketchseg_jax.infer.predictor import mask_from_logits
    from sketchseg_jax.sketch import Sketch
    start = time.perf_counter()
    if not isinstance(payload, dict):
      raise ApiError(400, "the request body must be a JSON object")
    key = payload.get("image")
    if not isinstance(key, str):
      raise ApiError(400, "'image' must be the id that /api/image or /api/world answered")
    strokes = parse_strokes(payload.get("strokes"), self.limits)
    canvas = parse_canvas(payload.get("canvas"))
    groups = parse_groups(payload.get("groups"), len(strokes), self.limits)
    threshold = parse_threshold(payload.get("threshold"))
    sketches = [Sketch([strokes[i] for i in group], canvas) for group in groups]
    with self._lock:
      photo = self._photos.get(key)
      if photo is None:
        raise ApiError(404, f"no photo {str(key)[:40]!r} here (the server keeps the last "
                            f"{self.limits.cached_photos}); load the photo again")
      self._photos.move_to_end(key)
      self._select(key, photo)
      low, regions = self.predictor.logits(sketches), self.predictor.regions
    hard = mask_from_logits(low, photo.display.shape[:2], threshold, regions)
    picture = render.overlay(photo.display, hard, None, threshold)
    h, w = hard.shape
    return {"overlay": png_data_url(picture), "coverage": float(hard.mean()),
            "sketches": len(sketches), "width": w, "height": h,
            "ms": round(1000 * (time.perf_counter() - start), 1)}

  def warm_up(self) -> None:
    """Compile the image path and the one-sketch query path before the first visitor."""
    self.world_photo(0)
    self.segment({"image": "world-0", "canvas": [100, 100],
                  "strokes": [[[20, 20], [80, 30], [50, 80]]]})


# ------------------------------------------------------------------------------ HTTP

def _host_name(host_header: str) -> str:
  host = host_header.strip().lower()
  if host.startswith("["):
    return host[1:host.find("]")] if "]" in host else host
  return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _is_loopback(host: str) -> bool:
  if host in LOOPBACK_NAMES:
    return True
  try:
    return ipaddress.ip_address(host).is_loopback
  except ValueError:
    return False


class Handler(BaseHTTPRequestHandler):
  """Routes requests to the server's DemoApp; every answer is JSON or the page."""

  server_version = "sketchseg-demo"
  # A stalled client must not hold a thread for ever.
  timeout = 60

  # http.server's own errors (a bad request line, an unknown method) are JSON too.
  def send_error(self, code, message=None, explain=None):
    try:
      phrase = HTTPStatus(code).phrase
    except ValueError:
      phrase = "error"
    self.close_connection = True
    self._send_json(code, {"error": message or phrase})

  def log_message(self, format, *args):
    log.debug("%s %s", self.address_string(), format % args)

  def _send(self, status: int, body: bytes, content_type: str, extra=()):
    self.send_response(status)
    self.send_header("Content-Type", content_type)
    self.send_header("Content-Length", str(len(body)))
    self.send_header("Cache-Control", "no-store")
    self.send_header("X-Content-Type-Options", "nosniff")
    for name, value in extra:
      self.send_header(name, value)
    self.end_headers()
    if self.command != "HEAD":
      self.wfile.write(body)

  def _send_json(self, status: int, obj):
    self._send(status, json.dumps(obj).encode(), "application/json; charset=utf-8")

  def _guarded(self, route):
    try:
      self._check_origin()
      route()
    except ApiError as e:
      self._send_json(e.status, {"error": str(e)})
    except UserError as e:  # bad sketches: empty, or no stroke inside the canvas
      self._send_json(400, {"error": str(e)})
    except (ConnectionError, TimeoutError):
      self.close_connection = True
    except Exception as e:  # a bug: say so in JSON, keep the traceback here
      log.exception("demo: %s %s failed", self.command, self.path)
      self._send_json(500, {"error": f"internal error ({type(e).__name__}); see the server's "
                                     "log"})

  def _check_origin(self):
    if self.server.loopback_only and not _is_loopback(_host_name(self.headers.get("Host", ""))):
      raise ApiError(403, "this demo answers only to localhost names (it is bound to "
                          "loopback); start it with --host to serve other names")
    origin = self.headers.get("Origin")
    if origin and origin != "null":
      if urllib.parse.urlsplit(origin).netloc.lower() != self.headers.get("Host", "").lower():
        raise ApiError(403, f"cross-origin request from {origin[:60]} refused")

  def _body(self, limit: int) -> bytes:
    length = self.headers.get("Content-Length")
    if self.headers.get("Transfer-Encoding"):
      raise ApiError(411, "send the body with a Content-Length, not chunked")
    if length is None:
      raise ApiError(411, "a Content-Length header is required")
    try:
      length = int(length)
      if length < 0:
        raise ValueError
    except ValueError:
      raise ApiError(400, f"bad Content-Length {length[:20]!r}") from None
    if length > limit:
      self._discard(length)
      raise ApiError(413, f"the request body is {length} bytes, over the limit of {limit} "
                          "bytes")
    data = self.rfile.read(length)
    if len(data) != length:
      raise ApiError(400, "the request body ended early")
    return data

  def _discard(self, length: int):
    """Read and drop a refused body (up to a bound) so the client sees the answer rather
    than a reset connection."""
    self.close_connection = True
    left = min(length, 64 * 1024 * 1024)
    while left > 0:
      chunk = self.rfile.read(min(left, 1 << 20))
      if not chunk:
        break
      left -= len(chunk)

  # -------------------------------------------------------------- routes

  def do_GET(self):
    self._guarded(self._get)

  def do_HEAD(self):
    self._guarded(self._get)

  def do_POST(self):
    self._guarded(self._post)

  def _get(self):
    url = urllib.parse.urlsplit(self.path)
    app = self.server.app
    if url.path in ("/", "/index.html"):
      self._send(200, self.server.page, "text/html; charset=utf-8", extra=[
          ("Content-Security-Policy", "default-src 'none'; script-src 'unsafe-inline'; "
           "style-src 'unsafe-inline'; img-src data: blob:; connect-src 'self'; "
           "form-action 'none'; frame-ancestors 'none'")])
    elif url.path == "/favicon.ico":
      self._send(204, b"", "image/x-icon")
    elif url.path == "/api/info":
      self._send_json(200, app.info())
    elif url.path == "/api/world":
      query = urllib.parse.parse_qs(url.query)
      self._send_json(200, app.world_photo(query.get("index", ["0"])[0]))
    elif url.path in ("/api/image", "/api/segment"):
      raise ApiError(405, f"{url.path} takes POST")
    else:
      raise ApiError(404, f"no such page: {url.path[:80]}")

  def _post(self):
    url = urllib.parse.urlsplit(self.path)
    app = self.server.app
    if url.path == "/api/image":
      data = self._body(app.limits.max_upload_bytes)
      data, name = self._upload(data)
      self._send_json(200, app.add_upload(data, name))
    elif url.path == "/api/segment":
      data = self._body(app.limits.max_json_bytes)
      try:
        payload = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
      except (UnicodeDecodeError, ValueError) as e:
        raise ApiError(400, f"the body is not valid JSON ({str(e)[:80]})") from None
      self._send_json(200, app.segment(payload))
    elif url.path in ("/api/info", "/api/world", "/"):
      raise ApiError(405, f"{url.path} takes GET")
    else:
      raise ApiError(404, f"no such page: {url.path[:80]}")

  def _upload(self, data: bytes) -> tuple:
    """(photo bytes, name) of a raw or multipart/form-data upload."""
    ctype = self.headers.get("Content-Type", "")
    name = urllib.parse.unquote(self.headers.get("X-Filename", "")) or "upload"
    if not ctype.lower().startswith("multipart/form-data"):
      return data, name
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + ctype.encode("latin-1") + b"\r\n\r\n" + data)
    if not message.is_multipart():
      raise ApiError(400, "a multipart/form-data body that does not parse (no boundary?)")
    parts = [p for p in message.iter_parts() if p.get_filename() is not None]
    parts = parts or list(message.iter_parts())
    if not parts:
      raise ApiError(400, "the multipart upload has no file part")
    return parts[0].get_payload(decode=True) or b"", parts[0].get_filename() or name


class DemoServer(ThreadingHTTPServer):
  """A ThreadingHTTPServer with the app, the page and its URL."""

  daemon_threads = True

  def __init__(self, address, app: DemoApp, page: bytes):
    import socket
    if ":" in address[0]:
      self.address_family = socket.AF_INET6
    self.app = app
    self.page = page
    self.loopback_only = _is_loopback(address[0])
    super().__init__(address, Handler)

  @property
  def url(self) -> str:
    host, port = self.server_address[:2]
    if host in ("0.0.0.0", "::"):
      host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    if ":" in host:
      host = f"[{host}]"
    return f"http://{host}:{port}/"


def page_html() -> bytes:
  from importlib import resources
  try:
    return resources.files("sketchseg_jax.infer").joinpath("demo_page.html").read_bytes()
  except FileNotFoundError:
    raise UserError("sketchseg_jax/infer/demo_page.html is missing from the installed "
                    "package; reinstall sketchseg_jax") from None


def make_server(predictor, host: str = "127.0.0.1", port: int = 0,
                limits: Limits = Limits()) -> DemoServer:
  """A DemoServer for `predictor` on host:port (0: any free port), not yet serving."""
  try:
    return DemoServer((host, int(port)), DemoApp(predictor, limits), page_html())
  except OSError as e:
    raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}"
                    + ("; pick another --port (0: any free one)" if e.errno in (98, 48)
                       else "")) from None


def serve(predictor, host: str = "127.0.0.1", port: int = 8765, open_browser: bool = True,
          warm_up: bool = True, out=None) -> None:
  """Serve until interrupted (Ctrl-C), printing the URL to `out` (stdout)."""
  import sys
  out = out or sys.stdout
  server = make_server(predictor, host, port)
  try:
    if warm_up:
      print("compiling the model for the first photo and sketch...", file=out, flush=True)
      server.app.warm_up()
    if not server.loopback_only:
      print(f"warning: listening on {host}: anyone who can reach this machine can use the "
            "demo", file=out, flush=True)
    print(f"sketchseg demo: {server.url}  (Ctrl-C to stop)", file=out, flush=True)
    if open_browser:
      import webbrowser
      try:
        webbrowser.open(server.url)
      except Exception:  # no browser here: the URL is printed
        pass
    server.serve_forever()
  except KeyboardInterrupt:
    pass
  finally:
    server.server_close()
