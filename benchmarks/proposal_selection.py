"""How good are the teacher's picks among colour-region proposals? For one segmenter run's
frozen teacher and validation queries, this cuts each photo into candidate masks
(sketchseg_jax.data.proposals, the photo's colours only), lets the teacher score the photo
masked by each against the query (as the loss's proposal term does) and prints the object
mIoU of the teacher's pick, of a random candidate and of the best candidate (an oracle), and
how the pick's mIoU splits between the half of the queries whose pick the teacher scores
highest and the other half (what proposals.keep relies on). Beside the plain pick (the
candidate closest to the query) it prints the contrastive pick at each --tau: the candidate
whose softmax over the batch's queries gives this query the most weight, i.e. the highest
s(q, c) / tau - logsumexp_j s(q_j, c) / tau (a candidate that matches every sketch, such as
a generic object-like region, is not specific to this one).
A diagnostic: it reads true masks, which no training path does.

  python benchmarks/proposal_selection.py --workdir W/segmenter [--batches 3] [--count 24]
      [--zoom 1.5] [--granularity object]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from segmenter_run import load_run, val_batches  # noqa: E402
from sketchseg_jax.data.proposals import DEFAULTS, region_proposals  # noqa: E402
from sketchseg_jax.models.sbir import l2_normalize  # noqa: E402
from sketchseg_jax.stages.segmenter import mask_box, zoom  # noqa: E402


def iou(a, b):
  union = (a | b).sum()
  return (a & b).sum() / union if union else 0.0


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--workdir", required=True, help="a mask-free segmenter run (its teacher)")
  ap.add_argument("--batches", type=int, default=3)
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--count", type=int, default=24)
  ap.add_argument("--threshold", type=float, default=DEFAULTS["threshold"])
  ap.add_argument("--zoom", type=float, default=1.5)
  ap.add_argument("--granularity", default="object")
  ap.add_argument("--tau", type=float, nargs="*", default=[0.03, 0.07, 0.2],
                  help="temperatures of the contrastive pick")
  args = ap.parse_args(argv)
  stage, params, step, frozen = load_run(args.workdir)
  batches = val_batches(stage, args.batch, args.granularity)

  @jax.jit
  def queries(batch):
    q = stage.query_logits(params, batch["image"], batch["sketch"], batch["sketch_valid"],
                           regions=batch.get("regions"))[2]
    return l2_normalize(q[:, 0])

  @jax.jit
  def scores(photo, cands, q):
    x = jnp.asarray(photo, jnp.float32)[None]
    m = cands.astype(jnp.float32)
    xm = m[..., None] * x + (1.0 - m[..., None]) * stage._fill(x)
    if args.zoom:
      xm = zoom(xm, *mask_box(m, args.zoom, 0.15), stage.towers.image_size)
    return stage.towers.photo(frozen, xm) @ q.T

  picked, rand, best, counts, pick_scores = [], [], [], [], []
  contrast = {t: [] for t in args.tau}
  start = time.time()
  for _ in range(args.batches):
    batch = next(batches)
    qs = np.asarray(queries(batch))
    for i in range(len(qs)):
      truth = np.asarray(batch["target"][i]) > 0
      cands, valid = region_proposals(np.asarray(batch["image"][i]), count=args.count,
                                      threshold=args.threshold)
      ious = [iou(c, truth) for c in cands[valid]]
      if not ious:
        picked.append(0.0), rand.append(0.0), best.append(0.0), counts.append(0)
        pick_scores.append(-np.inf)
        for t in args.tau:
          contrast[t].append(0.0)
        continue
      every = np.array(scores(batch["image"][i], cands, qs), np.float64)  # (count, batch)
      s = every[:, i].copy()
      s[~valid] = -np.inf
      picked.append(iou(cands[int(np.argmax(s))], truth))
      for t in args.tau:
        share = every[:, i] / t - np.logaddexp.reduce(every / t, axis=1)
        share[~valid] = -np.inf
        contrast[t].append(iou(cands[int(np.argmax(share))], truth))
      pick_scores.append(float(np.max(s)))
      rand.append(float(np.mean(ious)))
      best.append(max(ious))
      counts.append(len(ious))
  print(f"{args.workdir} (step {step}): {len(picked)} {args.granularity} queries of the val "
        f"split, up to {args.count} candidates per photo (mean {np.mean(counts):.1f}), zoom "
        f"{args.zoom:g}, {time.time() - start:.0f} s")
  print(f"mIoU of the teacher's pick {np.mean(picked):.3f}, a random candidate "
        f"{np.mean(rand):.3f}, the best candidate (oracle) {np.mean(best):.3f}")
  print("mIoU of the contrastive pick: " + ", ".join(
      f"tau {t:g} {np.mean(v):.3f}" for t, v in contrast.items()))
  order = np.argsort(-np.asarray(pick_scores), kind="stable")
  ranked = np.asarray(picked)[order]
  top, rest = ranked[:len(ranked) // 2], ranked[len(ranked) // 2:]
  print(f"mIoU of the pick, the half of the queries whose pick the teacher scores highest "
        f"{top.mean():.3f}, the other half {rest.mean():.3f}")


if __name__ == "__main__":
  main()
