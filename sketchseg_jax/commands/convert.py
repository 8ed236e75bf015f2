"""`sketchseg convert`: move a backbone checkpoint between PyTorch and Flax layouts."""

FORMATS = ("hf", "openai", "dinov2", "flax")


def register(sub):
  p = sub.add_parser(
      "convert", help="convert a backbone checkpoint between formats",
      description="Convert a CLIP or DINOv2 vision backbone. Formats: hf (Hugging Face folder), "
                  "openai (OpenAI/open_clip state dict), dinov2 (official state dict), flax "
                  "(this project's backbone folder). Outputs are written whole or not at all.")
  p.add_argument("--src", required=True, help="source file or folder")
  p.add_argument("--out", required=True, help="output file (openai, dinov2: .pt/.pth or "
                 ".safetensors) or folder (hf, flax)")
  p.add_argument("--from", dest="src_format", choices=FORMATS, default=None,
                 help="source format (detected when omitted)")
  p.add_argument("--to", dest="dst_format", choices=FORMATS, default="flax",
                 help="output format (default: flax)")
  p.add_argument("--mlp", choices=("quick_gelu", "gelu"), default=None,
                 help="override the MLP activation a bare state dict cannot tell "
                      "(open_clip models trained with nn.GELU)")
  p.add_argument("--heads", type=int, default=None,
                 help="attention head count, for a bare state dict whose width is not a "
                      "multiple of 64 (released models use 64-wide heads)")
  p.set_defaults(handler=run)


def run(args):
  from sketchseg_jax.convert import formats
  overrides = {"mlp": args.mlp} if args.mlp else {}
  if args.heads:
    overrides["num_heads"] = args.heads
  cfg, flat = formats.read(args.src, args.src_format, **overrides)
  formats.write(cfg, flat, args.out, args.dst_format)
  n = sum(int(v.size) for v in flat.values())
  print(f"wrote {args.out} ({args.dst_format}): {cfg.family} width {cfg.width}, depth "
        f"{cfg.depth}, patch {cfg.patch_size}, {n / 1e6:.1f}M parameters")
  return 0
