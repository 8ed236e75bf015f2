"""`sketchseg train`: run (or resume) a training stage from a config file."""


def register(sub):
  p = sub.add_parser(
      "train", help="train a stage from a config (resumes when the workdir has a checkpoint)",
      description="Train from configs/X.py[:arg], or from a run's saved WORKDIR/config.json "
                  "(to continue it, e.g. with a larger --config.total_steps). Any "
                  "--config.a.b=value overrides a field (unknown keys and wrong types are "
                  "errors). A workdir holding a checkpoint resumes from it. Writes "
                  "WORKDIR/config.json, metrics.jsonl, tensorboard/, checkpoints/.")
  p.add_argument("--config", required=True, metavar="FILE[:ARG]|WORKDIR/config.json")
  p.add_argument("--workdir", required=True)
  p.set_defaults(handler=run, accepts_overrides=True)


def run(args):
  import logging
  from sketchseg_jax.train.config_lib import load_config
  from sketchseg_jax.train.loop import train
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
  config = load_config(args.config, args.overrides)
  if config.get("stage") == "chain":
    from sketchseg_jax.train import chain
    chain.train(config, args.workdir)
    return 0
  last = train(config, args.workdir)
  import jax
  if last and jax.process_index() == 0:
    shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(last.items())
                      if k in ("loss", "accuracy") or k.startswith("eval/"))
    print(f"done: step metrics {shown}; see {args.workdir}/metrics.jsonl")
  return 0
