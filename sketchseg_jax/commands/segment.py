"""`sketchseg segment`: a binary mask (and an overlay to look at) of a photo for a sketch."""

from sketchseg_jax.errors import UserError


def register(sub):
  p = sub.add_parser(
      "segment", help="segment a photo with a sketch using a trained segmenter",
      description="Segment PHOTO with one sketch, or several separate sketches of the same "
                  "query (the mask is the union: the max of their masks), using the newest "
                  "checkpoint of a segmenter (or supervised) training run. Writes a PNG mask "
                  "(0 / 255, the photo's size) and, with --overlay, the mask over the photo "
                  "with the sketch in a corner. Sketches: .ndjson .npz .svg .png .jpg.")
  p.add_argument("--checkpoint", required=True, metavar="DIR",
                 help="workdir of a segmenter training run (its config.json, checkpoints/)")
  p.add_argument("--image", required=True, metavar="PHOTO", help="the photo (PNG, JPEG, ...)")
  p.add_argument("--sketch", required=True, action="extend", nargs="+", metavar="SKETCH",
                 help="sketch file(s); repeat the flag or list several for a group query")
  p.add_argument("--out", required=True, metavar="MASK.png", help="binary mask to write")
  p.add_argument("--overlay", metavar="O.png", help="also write the mask over the photo")
  p.add_argument("--threshold", type=float, default=0.5,
                 help="mask probability threshold (default 0.5)")
  p.add_argument("--step", type=int, help="checkpoint step (default: the newest)")
  p.set_defaults(handler=run)


def _check_out(path, flag):
  import os
  folder = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(folder):
    raise UserError(f"{flag} {path}: folder {folder} does not exist")
  if os.path.isdir(path):
    raise UserError(f"{flag} {path} is a directory")


def run(args):
  import logging
  import numpy as np

  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
  if not 0.0 < args.threshold < 1.0:
    raise UserError(f"--threshold must be between 0 and 1 (exclusive), got {args.threshold}")
  _check_out(args.out, "--out")
  if args.overlay:
    _check_out(args.overlay, "--overlay")
  # Cheap checks first: the photo and the sketch files, before the checkpoint is read.
  from sketchseg_jax import sketch as sketch_lib
  from sketchseg_jax.infer import render
  from sketchseg_jax.infer.predictor import Predictor, load_photo
  photo = load_photo(args.image)
  sketches = [sketch_lib.load(path) for path in args.sketch]

  predictor = Predictor.from_checkpoint(args.checkpoint, step=args.step)
  rasters = np.stack([predictor.raster(s, path) for s, path in zip(sketches, args.sketch)])
  predictor.set_image(photo)
  probs = predictor.segment(list(rasters))
  hard = probs >= args.threshold
  render.save_png(hard, args.out)
  print(f"wrote {args.out}: {photo.shape[1]}x{photo.shape[0]} mask, "
        f"{100 * hard.mean():.1f}% of the photo at threshold {args.threshold:g} "
        f"(checkpoint step {predictor.step})")
  if args.overlay:
    render.save_png(render.overlay(photo, probs, rasters, args.threshold, min_size=256),
                    args.overlay)
    print(f"wrote {args.overlay}")
  return 0
