"""`sketchseg demo`: a local web page to sketch on and watch a trained segmenter's mask follow."""


def register(sub):
  p = sub.add_parser(
      "demo", help="a local web page: sketch by hand and watch the mask follow",
      description="Serve a web page (standard-library HTTP server, no downloads) with a photo "
                  "on the left (upload one, or pick a photo of the procedural world) and a "
                  "canvas on the right: draw with the mouse, a pen or a finger, and the mask "
                  "of the newest checkpoint of a segmenter (or supervised) run is redrawn "
                  "over the photo at the end of each stroke. Binds 127.0.0.1 by default.")
  p.add_argument("--checkpoint", required=True, metavar="DIR",
                 help="workdir of a segmenter training run (its config.json, checkpoints/)")
  p.add_argument("--host", default="127.0.0.1",
                 help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 "
                      "serves everyone who can reach it)")
  p.add_argument("--port", type=int, default=8765,
                 help="port to listen on (default 8765; 0: any free port)")
  p.add_argument("--no-browser", action="store_true",
                 help="print the URL but do not open a browser")
  p.add_argument("--step", type=int, help="checkpoint step (default: the newest)")
  p.set_defaults(handler=run)


def run(args):
  import logging

  from sketchseg_jax.errors import UserError
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
  if not 0 <= args.port <= 65535:
    raise UserError(f"--port must be in 0..65535, got {args.port}")
  from sketchseg_jax.infer.demo import serve
  from sketchseg_jax.infer.predictor import Predictor
  predictor = Predictor.from_checkpoint(args.checkpoint, step=args.step)
  serve(predictor, host=args.host, port=args.port, open_browser=not args.no_browser)
  return 0
