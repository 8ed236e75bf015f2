"""`sketchseg export`: hand a trained run to PyTorch users (and ONNX runtimes)."""


def register(sub):
  p = sub.add_parser(
      "export", help="export a trained segmenter, teacher or distilled tower for PyTorch",
      description="A segmenter or supervised run becomes OUT/sketchseg_torch.py (a "
                  "self-contained PyTorch module: plain torch and numpy), its weights "
                  "OUT/sketchseg.safetensors, OUT/sketchseg.json, and the ONNX graphs "
                  "OUT/image_path.onnx and OUT/query_path.onnx. A teacher run becomes Hugging "
                  "Face CLIP tower folders with its prompts; a distill run the same, its "
                  "distilled photo tower beside the teacher's sketch tower. OUT is written "
                  "whole or not at all; an earlier export there is replaced.")
  p.add_argument("--checkpoint", required=True, metavar="DIR",
                 help="the training run's workdir (or its checkpoints/ folder)")
  p.add_argument("--out", required=True, metavar="OUT", help="output folder")
  p.add_argument("--step", type=int, help="checkpoint step (default: the newest)")
  p.add_argument("--no-onnx", dest="onnx", action="store_false",
                 help="skip the ONNX graphs (segmenter runs)")
  p.set_defaults(handler=run)


def run(args):
  import logging
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
  from sketchseg_jax.export import export_checkpoint
  result = export_checkpoint(args.checkpoint, args.out, step=args.step, onnx=args.onnx)
  print(f"wrote {result['out']} ({result['stage']} run, checkpoint step {result['step']}): "
        f"{', '.join(f for f in result['files'] if '/' not in f)}")
  if result["stage"] in ("teacher", "distill"):
    print(f"PyTorch: from sketchseg_jax.convert.teacher_export import load_exported_teacher; "
          f"t = load_exported_teacher({result['out']!r}); t.photo(photos), t.sketch(ink)")
  else:
    print(f"PyTorch: import sys; sys.path.insert(0, {result['out']!r}); import sketchseg_torch; "
          f"m = sketchseg_torch.load({result['out']!r})")
  return 0
