"""Which masks does the frozen teacher reward? The mask-free loss can only find the true mask
if the teacher scores the photo masked by it better than by the masks a segmenter can fall
into instead. This prints, for one segmenter run's teacher and evaluation queries, L_in (the
loss's InfoNCE of each query over the batch's masked photos) and the mean cosine of query
and masked photo, for: the true masks, all-ones, a centred disk (area 0.28), and the run's
own predictions (soft and thresholded at 0.5). A diagnostic: it reads true masks, which no
training path does.

  python benchmarks/teacher_mask_preference.py --workdir W/segmenter [--batches 4] [--batch 64]
      [--zoom S]   # the loss's zoom (default: the run's loss.zoom; 0 = whole photo)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from segmenter_run import load_run, val_batches  # noqa: E402
from sketchseg_jax.models.sbir import l2_normalize  # noqa: E402
from sketchseg_jax.stages.segmenter import infonce_positive_only, mask_box, zoom  # noqa: E402


ORDER = ("true masks", "all-ones", "centred disk", "this run's masks", "this run's masks > 0.5")


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--workdir", required=True, help="a mask-free segmenter run")
  ap.add_argument("--batches", type=int, default=4)
  ap.add_argument("--batch", type=int, default=64)
  ap.add_argument("--granularity", default="object")
  ap.add_argument("--zoom", type=float, default=None,
                  help="show the teacher the masked photo zoomed to the mask's box, as the "
                       "loss's zoom option does (default: the run's own setting)")
  args = ap.parse_args(argv)
  stage, params, step, frozen = load_run(args.workdir)
  batches = val_batches(stage, args.batch, args.granularity)
  tau = float(stage.lcfg["tau"])
  zoom_scale = float(stage.lcfg["zoom"] if args.zoom is None else args.zoom)
  zoom_min = float(stage.lcfg["zoom_min"])

  @jax.jit
  def scores(batch):
    photos = jnp.asarray(batch["image"], jnp.float32)
    pred, _, q, _ = stage.query_logits(params, batch["image"], batch["sketch"],
                                       batch["sketch_valid"], regions=batch.get("regions"))
    pred = jax.nn.sigmoid(pred)
    qi = l2_normalize(q[:, 0])
    fill = stage._fill(photos)
    truth = (batch["target"] > 0).astype(jnp.float32)
    h = photos.shape[1]
    yy, xx = jnp.meshgrid(jnp.arange(h) + 0.5, jnp.arange(h) + 0.5, indexing="ij")
    disk = jnp.broadcast_to((jnp.hypot(yy - h / 2, xx - h / 2) < 0.3 * h).astype(jnp.float32),
                            truth.shape)
    masks = dict(zip(ORDER, (truth, jnp.ones_like(truth), disk, pred,
                             (pred > 0.5).astype(jnp.float32))))
    out = {}
    for name, m in masks.items():
      x = m[..., None] * photos + (1.0 - m[..., None]) * fill
      if zoom_scale:
        x = zoom(x, *mask_box(m, zoom_scale, zoom_min), stage.towers.image_size)
      fp = stage.towers.photo(frozen, x)
      out[name] = (infonce_positive_only(qi, fp, tau), jnp.mean(jnp.sum(qi * fp, axis=-1)),
                   jnp.mean(m))
    return out

  rows = {}
  for _ in range(args.batches):
    for name, v in jax.device_get(scores(next(batches))).items():
      rows.setdefault(name, []).append(v)
  print(f"{args.workdir} (step {step}), {args.batches} x {args.batch} {args.granularity} queries "
        f"of the val split, zoom {zoom_scale:g}; lower L_in = preferred by the teacher "
        f"(chance: ln {args.batch} = {np.log(args.batch):.2f})")
  print(f"{'masks':24s} {'L_in':>7s} {'cos(q, masked)':>15s} {'area':>6s}")
  for name in ORDER:
    v = rows[name]
    lin, cos, area = np.mean(np.array(v), axis=0)
    print(f"{name:24s} {lin:7.3f} {cos:15.3f} {area:6.3f}")


if __name__ == "__main__":
  main()
