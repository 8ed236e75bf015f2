"""`sketchseg data`: write the procedural world to disk (`synth`) and look at a data set (`show`).

The writers live in sketchseg_jax.data.synth and the sheet in sketchseg_jax.data.contact_sheet,
so both work without the CLI.
"""

from __future__ import annotations

import os

ALL_GRANULARITIES = "object,part,group,instance,category"


def register(sub):
  p = sub.add_parser("data", help="write the procedural world to disk, look at data sets",
                     description="Write the procedural world as a TFDS dataset or an "
                                 "evaluation folder (synth), or draw a contact sheet of a "
                                 "data set (show).")
  inner = p.add_subparsers(dest="data_command", metavar="ACTION")
  inner.required = True

  synth = inner.add_parser(
      "synth", help="write N world samples as a TFDS dataset or an evaluation folder",
      description="Write the first N records of the procedural world's split. tfds: a TFDS "
                  "dataset 'sketchseg_world' (array_record, no TensorFlow needed), read back "
                  "by the source {name: tfds, path: DIR, split: S}. folder: the evaluation "
                  "layout images/, sketches/, masks/, manifest.json, read by the source "
                  "{name: eval_folder, root: DIR}. The output is staged in a hidden sibling "
                  "folder and renamed into place when complete.")
  synth.add_argument("--out", required=True, metavar="DIR", help="output folder")
  synth.add_argument("--split", default="train", metavar="S",
                     help="world split: train, val or test (default train); val and train "
                          "leave the held-out categories out, test draws from all")
  synth.add_argument("--num", type=int, required=True, metavar="N", help="number of records")
  synth.add_argument("--format", choices=("tfds", "folder"), default="tfds",
                     help="tfds (default) or folder")
  synth.add_argument("--size", default="224", metavar="S",
                     help="photo size: S or WxH pixels (default 224)")
  synth.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
  synth.add_argument("--kind", choices=("query", "sbir"), default="query",
                     help="query: scene photos with a query of some granularity (default); "
                          "sbir: one-object photo-sketch pairs for the teacher")
  synth.add_argument("--granularities", default=ALL_GRANULARITIES, metavar="G[:W],...",
                     help="query granularities, optionally weighted (object:2,part:1); "
                          f"default all five, equally: {ALL_GRANULARITIES}")
  synth.add_argument("--aligned-share", type=float, default=0.0, metavar="F",
                     help="share of queries whose sketch sits where the object is in the "
                          "photo, Sketchy-style (default 0)")
  synth.add_argument("--heldout", default=None, metavar="A,B,...",
                     help="held-out (zero-shot) categories; default the world's own "
                          "(bus,rocket,umbrella); 'none' holds out nothing")
  synth.add_argument("--overwrite", action="store_true",
                     help="replace a non-empty --out that an earlier synth wrote")
  synth.set_defaults(handler=run_synth)

  show = inner.add_parser(
      "show", help="draw a contact sheet of a synth output or an evaluation folder",
      description="One row per record: photo, sketch(es), target over the photo (an aligned "
                  "sketch drawn on it in cyan), instance masks coloured with part borders.")
  show.add_argument("dir", metavar="DIR", help="a synth output (tfds or folder) or any "
                                               "evaluation folder")
  show.add_argument("--split", default=None, metavar="S",
                    help="TFDS split to show (default train, else the dataset's first)")
  show.add_argument("--num", type=int, default=12, help="records to show (default 12)")
  show.add_argument("--start", type=int, default=0, help="first record (default 0)")
  show.add_argument("--cell", type=int, default=160, help="cell size in pixels (default 160)")
  show.add_argument("--out", required=True, help="output PNG")
  show.set_defaults(handler=run_show)


def run_synth(args) -> int:
  from sketchseg_jax.data import synth
  from sketchseg_jax.errors import UserError

  try:
    result = synth.synth(
        args.out, split=args.split, num=args.num, format=args.format,
        size=synth.parse_size(args.size), seed=args.seed, kind=args.kind,
        granularities=synth.parse_granularities(args.granularities),
        aligned_share=args.aligned_share, heldout=synth.parse_names(args.heldout),
        overwrite=args.overwrite)
  except OSError as e:
    raise UserError(f"cannot write {args.out}: {e.strerror or e}") from None
  print(result.summary())
  return 0


def run_show(args) -> int:
  from sketchseg_jax.data import contact_sheet
  from sketchseg_jax.errors import UserError

  if args.num < 1:
    raise UserError(f"--num must be >= 1, got {args.num}")
  if args.start < 0:
    raise UserError(f"--start must be >= 0, got {args.start}")
  if args.cell < 32:
    raise UserError(f"--cell must be >= 32, got {args.cell}")
  out_dir = os.path.dirname(os.path.abspath(args.out))
  if not os.path.isdir(out_dir):
    raise UserError(f"--out {args.out}: folder {out_dir} does not exist")
  source, fmt = contact_sheet.open_dataset(args.dir, args.split)
  if args.start >= len(source):
    raise UserError(f"--start {args.start}: {args.dir} has {len(source)} records")
  indices = range(args.start, min(len(source), args.start + args.num))
  records = [source[i] for i in indices]
  names = None
  if fmt == "tfds":
    names = [f"{source.split}[{i}]" for i in indices]
  sheet = contact_sheet.render_sheet(records, cell=args.cell, names=names)
  try:
    sheet.save(args.out, format="PNG")
  except OSError as e:
    raise UserError(f"cannot write {args.out}: {e.strerror or e}") from None
  print(f"wrote {args.out}: {len(records)} {fmt} records of {args.dir}")
  return 0
