"""report.md of a chained run: the evaluation table of every stage, with what each figure means."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

GRANULARITIES = ("object", "part", "group", "instance", "category")


def _f(value) -> str:
  return "-" if value is None else f"{value:.3f}"


def _row(label, miou: dict, best: Optional[dict], keys) -> str:
  cells = []
  for k in keys:
    v = miou.get(k)
    b = (best or {}).get(k)
    cells.append(_f(v) + (f" ({b:.3f})" if b is not None and v is not None else ""))
  return f"| {label} | " + " | ".join(cells) + " |"


def segmentation_table(seg: dict, sup: Optional[dict]) -> list:
  keys = [g for g in GRANULARITIES if g in seg["miou"]] + ["all"]
  head = ["| model, queries | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
  rows = []
  splits = seg.get("by_split", {})
  if splits:
    for split, r in splits.items():
      rows.append(_row(f"mask-free segmenter, {split}", r["miou"], r["miou_best_threshold"], keys))
  else:
    rows.append(_row("mask-free segmenter", seg["miou"], seg["miou_best_threshold"], keys))
  if sup is not None:
    for split, r in (sup.get("by_split") or {"all": sup}).items():
      rows.append(_row(f"supervised upper bound, {split}", r["miou"], r["miou_best_threshold"], keys))
  b = seg["baselines"]
  if "miou" in b.get("zero_shot", {}):
    rows.append(_row("zero-shot (segmenter at step 0)", b["zero_shot"]["miou"],
                     b["zero_shot"].get("miou_best_threshold"), keys))
  rows.append(_row("all-ones mask", b["all_ones"]["miou"], None, keys))
  rows.append(_row("centre prior (best centred disk)", b["centre_prior"]["miou"], None, keys))
  return head + rows


def styles_table(seg: dict) -> list:
  styles = seg.get("styles")
  if not styles:
    return []
  keys = [g for g in GRANULARITIES if g in seg["miou"]] + ["all"]
  base = (seg.get("by_split") or {}).get("seen", seg)
  lines = ["| sketch style | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|",
           _row("as trained", base["miou"], None, keys)]
  lines += [_row(name, r["miou"], None, keys) for name, r in styles.items()]
  return lines


def _gallery(r: dict) -> str:
  """"200", or "200 x 10" for ten independent galleries of 200 photos (eval.galleries)."""
  size, count = r.get("gallery_size", "-"), r.get("galleries", 1)
  return f"{size} x {count}" if count and count > 1 else f"{size}"


def teacher_table(t: dict) -> list:
  lines = ["| set | acc@1 | acc@5 | acc@10 | mAP@all | untrained acc@5 | untrained mAP@all | gallery |",
           "|---|---|---|---|---|---|---|---|"]
  for name, r in t.items():
    if not isinstance(r, dict) or "acc@5" not in r:
      continue
    u = t.get("untrained", {}).get(name, {})
    lines.append(f"| {name} | {_f(r['acc@1'])} | {_f(r['acc@5'])} | {_f(r['acc@10'])} | "
                 f"{_f(r['mAP@all'])} | {_f(u.get('acc@5'))} | {_f(u.get('mAP@all'))} | "
                 f"{_gallery(r)} |")
  return lines


def distill_table(d: dict) -> list:
  lines = ["| set | teacher acc@5 | student acc@5 | keeps | keeps, 90% interval | "
           "teacher mAP@all | student mAP@all | gallery |",
           "|---|---|---|---|---|---|---|---|"]
  for name, r in d.items():
    if not isinstance(r, dict) or "keeps" not in r:
      continue
    t = d.get("teacher", {}).get(name, {})
    low, high = (r.get("keeps_ci90") or [None, None])[:2]
    lines.append(f"| {name} | {_f(t.get('acc@5'))} | {_f(r['acc@5'])} | {_f(r['keeps'])} | "
                 f"{_f(low)}-{_f(high)} | {_f(t.get('mAP@all'))} | {_f(r['mAP@all'])} | "
                 f"{_gallery(r)} |")
  cost = d.get("cost", {})
  if cost:
    lines.append("")
    lines.append(f"Forward+backward GFLOPs per photo: teacher {_f(cost.get('teacher_gflops'))}, "
                 f"student {_f(cost.get('student_gflops'))} (ratio {_f(cost.get('ratio'))}).")
  return lines


def headline(seg: dict, sup: Optional[dict]) -> list:
  out = []
  m = seg["miou"]
  b = seg["baselines"]
  if "object" in m:
    line = (f"Mask-free object mIoU {m['object']:.3f} vs all-ones {b['all_ones']['miou']['object']:.3f}"
            f" and centre prior {b['centre_prior']['miou']['object']:.3f}")
    if sup is not None and sup["miou"].get("object"):
      line += (f"; supervised {sup['miou']['object']:.3f}, so mask-free reaches "
               f"{m['object'] / sup['miou']['object']:.0%} of supervised")
    out.append(line + ".")
  return out


def write_report(workdir: Path, reports: dict, export_dir: Optional[Path], minutes: float) -> Path:
  seg = reports.get("segmenter")
  sup = reports.get("supervised")
  lines = ["# sketchseg report", ""]
  if seg is not None:
    lines += headline(seg, sup) + [""]
  lines += [f"Evaluated {', '.join(reports)} in {workdir.absolute()} ({minutes:.1f} min from the "
            "start of this command).", ""]
  if seg is not None:
    lines += ["## Segmentation: mIoU per granularity", "",
              "IoU per query at threshold 0.5 (in brackets: at the best single threshold per "
              "granularity, chosen on these same queries, hence optimistic), averaged per "
              "granularity: object = a whole-object sketch, part = a partial sketch, group = "
              "several objects, instance = one of several objects of a category, category = all "
              "of them. Seen / heldout: queries of categories the teacher and segmenter trained "
              "on / never saw. Baselines on the same queries: zero-shot = the segmenter before "
              "training (backbone and head from the teacher's photo tower); all-ones = the whole "
              "photo; centre prior = the best centred disk.", ""]
    lines += segmentation_table(seg, sup) + [""]
    st = styles_table(seg)
    if st:
      lines += ["## Sketch styles the segmenter never trained on (seen categories, mIoU at 0.5)",
                "", "thick = strokes 2.5x wider; sparse = 40% of strokes dropped; wobbly = strong "
                "elastic distortion and point jitter.", ""] + st + [""]
  if "teacher" in reports:
    lines += ["## Teacher: sketch-based image retrieval", "",
              "acc@k: a sketch's own photo is among the k nearest of the gallery (fine-grained); "
              "mAP@all: photos of the sketch's category ranked first. full / partial: whole and "
              "partitioned sketches; heldout: unseen categories; untrained: the same towers at "
              "initialisation.", ""] + teacher_table(reports["teacher"]) + [""]
  if "distill" in reports:
    lines += ["## Distilled photo tower", "",
              "Retrieval of (teacher sketch tower, distilled photo tower) against (teacher sketch "
              "tower, teacher photo tower); keeps = student acc@5 / teacher acc@5.", ""]
    lines += distill_table(reports["distill"]) + [""]
  lines += ["## Files", ""]
  for name in reports:
    lines.append(f"- `{name}/`: an ordinary workdir (config.json, metrics.jsonl, checkpoints/, "
                 f"eval/metrics.json); `sketchseg eval --workdir {workdir / name}` re-evaluates it.")
  if (workdir / "grid.png").exists():
    lines.append("- `grid.png`: evaluation queries, one per row: photo | sketch | predicted mask "
                 "(red: its 0.5 contour) | true mask (green), with the query's granularity and IoU.")
  if export_dir is not None:
    onnx = " and ONNX" if (export_dir / "image_path.onnx").exists() else ""
    lines.append(f"- `{export_dir.name}/`: the segmenter in PyTorch (`sketchseg_torch.py`, "
                 f"weights in safetensors){onnx}; see the README's PyTorch section.")
  path = workdir / "report.md"
  tmp = path.with_name(f".report.md.{os.getpid()}.tmp")
  tmp.write_text("\n".join(lines) + "\n")
  os.replace(tmp, path)
  return path
