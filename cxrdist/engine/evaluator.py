"""Final evaluation of a trained model: per-class AUROC on ``test``, the localization protocols on ``bbox``.

Writes, per split, into ``<out>/<split>/``: ``metrics.json`` (every number and every protocol choice),
``predictions.npz`` (keys, logits, labels in split order, patient ids), ``auroc.md`` (NIH: with 95 % CIs) and
``roc.png``; on ``bbox`` also
``heatmaps.npz`` (key, class, the heatmap exactly as the localization code received it) and
``localization.md`` and ``heatmaps/*.png`` overlays (``heatmaps/boxes/*.png``: the same without drawn boxes, whose
boxes go to the tracker as data: W&B box layers). Heatmaps come from the method (``maps`` callable) in the
network-input frame; the eval crop is undone here by pasting the map into a full-image canvas at
``compare_size`` whose outside is the map's minimum (so it is 0 after min-max and yields no box).
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrdist import dist
from cxrdist.data.external.common import label_masks
from cxrdist.data.format import read_json
from cxrdist.data.loaders.base import BaseLoader
from cxrdist.data.transforms import paste_maps
from cxrdist.engine.checkpoint import load_trained
from cxrdist.engine.inference import gather_to_main, run_inference
from cxrdist.engine.stages import EvalStage, StageContext
from cxrdist.eval.box_overlay import box_overlay
from cxrdist.eval.boxes import boxes_from_heatmap, heatmap_to_image, scale_xywh
from cxrdist.eval.classification import auroc_per_class
from cxrdist.eval.compare import auroc_intervals, intervals_table_md, localization_intervals, patients_of
from cxrdist.eval.external import masked_auroc, masked_bootstrap_mean
from cxrdist.eval.figures import plot_heatmap_overlay, plot_roc
from cxrdist.eval.localization import ACC_AT_IOU, BEST_BOX_IOU, ORACLE, evaluate_localization
from cxrdist.eval.pairs_file import write_pairs
from cxrdist.eval.schema import METRICS_SCHEMA
from cxrdist.eval.tables import auroc_table_md, localization_table_md
from cxrdist.eval.tracker_tables import BBOX_COLUMNS, ROC_COLUMNS, bbox_image_rows, roc_points
from cxrdist.labels import BOX_CLASSES, LABELS

logger = logging.getLogger(__name__)


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=float) + "\n")
    tmp.replace(path)


def uncrop_maps(maps: np.ndarray, loader: BaseLoader, compare: int) -> dict[tuple[str, int], np.ndarray]:
    """Full-image heatmaps at ``compare``² for every (key, box class) that has a ground-truth box."""
    out = {}
    reader = loader.reader
    for i in range(len(reader)):
        meta = reader.meta(i)
        classes = sorted({b["class"] for b in meta["boxes"]})
        if not classes:
            continue
        g = loader.geometry(i, 0, 0)
        planes = paste_maps(torch.from_numpy(maps[i][classes]), g, tuple(meta["size"]), compare)
        for c, canvas in zip(classes, planes):
            # float16 storage is what heatmaps.npz keeps; hand the localization code exactly those values.
            out[(reader.keys[i], c)] = canvas.numpy().astype(np.float16).astype(np.float32)
    return out


def _boxes(loader: BaseLoader) -> list[dict[str, Any]]:
    recs = []
    for i in range(len(loader.reader)):
        meta = loader.reader.meta(i)
        recs += [
            {"key": meta["key"], "class_idx": b["class"], "x": b["x"], "y": b["y"], "w": b["w"], "h": b["h"]}
            for b in meta["boxes"]
        ]
    return recs


def _overlays(
    out: Path, loader: BaseLoader, heatmaps: dict, boxes: list[dict], compare: int, per_class: int, threshold: float
) -> dict[str, Any]:
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    written, counts = {}, dict.fromkeys(BOX_CLASSES, 0)
    for b in boxes:
        name = LABELS[b["class_idx"]]
        if counts[name] >= per_class or (b["key"], b["class_idx"]) not in heatmaps:
            continue
        i = loader.reader.key_to_index[b["key"]]
        meta = loader.reader.meta(i)
        img = Image.open(io.BytesIO(loader.reader.jpeg(i))).convert("L").resize((compare, compare))
        hm = heatmaps[(b["key"], b["class_idx"])]
        gt = scale_xywh(np.array([[b["x"], b["y"], b["w"], b["h"]]]), tuple(meta["size"]), compare)
        pred = boxes_from_heatmap(heatmap_to_image(hm, compare), threshold)
        path = out / f"{name}_{b['key']}.png"
        plot_heatmap_overlay(np.asarray(img), hm, gt, pred, path, title=f"{name} — {b['key']} (T={threshold:g})")
        written[f"heatmap/{name}/{b['key']}"] = str(path)
        # the same example with its boxes as data: a tracker that draws boxes (W&B) shows them as layers
        boxed = out / "boxes" / path.name
        written[f"boxes/{name}/{b['key']}"] = box_overlay(np.asarray(img), hm, gt, pred, name, boxed)
        counts[name] += 1
    return written


def _localize(maps: np.ndarray, loader: BaseLoader, ecfg: Any, out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The localization protocols on the gathered maps; writes heatmaps.npz, localization.md and overlays."""
    boxes = _boxes(loader)
    heatmaps = uncrop_maps(maps, loader, ecfg.compare_size)
    sizes = {loader.reader.keys[i]: tuple(loader.reader.meta(i)["size"]) for i in range(len(loader.reader))}
    loc = evaluate_localization(
        heatmaps,
        boxes,
        orig_size=sizes,
        compare_size=ecfg.compare_size,
        thresholds=list(ecfg.thresholds),
        connectivity=ecfg.connectivity,
    )
    pairs = sorted(heatmaps)
    np.savez_compressed(
        out / "heatmaps.npz",
        keys=np.array([k for k, _ in pairs]),
        class_index=np.array([c for _, c in pairs]),
        heatmaps=np.stack([heatmaps[p] for p in pairs]).astype(np.float16)
        if pairs
        else np.zeros((0, ecfg.compare_size, ecfg.compare_size), np.float16),
        size=np.array([ecfg.compare_size, ecfg.compare_size]),
    )
    (out / "localization.md").write_text(localization_table_md(loc) + "\n")
    overlays = _overlays(
        out / "heatmaps", loader, heatmaps, boxes, ecfg.compare_size, ecfg.heatmap_examples, float(ecfg.thresholds[0])
    )
    return loc, overlays


def evaluate_split(
    ctx: StageContext, model: torch.nn.Module, stage: EvalStage, split: str, out: Path, prefix: str | None = None
) -> dict[str, Any] | None:
    """Evaluate one split collectively; rank 0 writes the files and returns the metrics (None elsewhere).
    ``prefix``: the W&B key prefix (default ``eval``, or ``eval/external/<dataset>`` on an external set)."""
    spec = ctx.loader_spec(
        split=split,
        train=False,
        transforms=stage.transforms(ctx),
        batch=ctx.cfg.loader.eval_batch_per_rank,
        **stage.loader_extras(ctx),
    )
    loader = ctx.make_loader(spec)
    with ctx.progress(loader.num_samples, f"{stage.name}: {split}") as bar:
        local = run_inference(
            model,
            loader,
            maps=stage.maps if split == "bbox" else None,
            forward=lambda m, b: stage.maps(m, b)[0],
            progress=bar,
        )
    placed = gather_to_main(local, loader.num_samples)
    if placed is None:
        return None
    out.mkdir(parents=True, exist_ok=True)
    metrics, images, published = _split_metrics(ctx, stage, split, loader, placed, out, prefix is not None)
    # without a prefix, "dataset" is recorded only for a set with a label mask (external)
    prefix = prefix or ("eval" if "dataset" not in metrics else f"eval/external/{metrics['dataset']}")
    _log_split(ctx, split, loader, placed["logits"], metrics, images, published, prefix)
    logger.info("%s: mean AUROC %s over %d samples → %s", split, metrics["auroc"]["mean"], metrics["num_samples"], out)
    return metrics


def _split_metrics(
    ctx: StageContext,
    stage: EvalStage,
    split: str,
    loader: BaseLoader,
    placed: dict[str, np.ndarray],
    out: Path,
    other_set: bool,
) -> tuple[dict[str, Any], dict[str, str], Any]:
    """Rank 0: predictions.npz, AUROC (+ intervals), ROC, localization and metrics.json of one split; returns the
    metrics, the images to log and the published AUROC set beside them (None on another dataset). ``other_set``:
    the shards are not the run's own (their dataset and hash are recorded, as for any set with a label mask)."""
    labels, logits, keys = loader.reader.labels, placed["logits"], list(loader.reader.keys)
    known = label_masks(loader.reader)  # an external set's known labels and patients (None: NIH, all known)
    mask = None if known is None else known[0]
    saved = _patient_ids(loader)  # for the patient-clustered intervals (report, compare)
    extra = ({} if mask is None else {"label_mask": mask}) | ({} if saved is None else {"patient_ids": saved})
    np.savez(out / "predictions.npz", keys=np.array(keys), logits=logits, labels=labels, **extra)
    auroc = auroc_per_class(labels, logits) if mask is None else masked_auroc(labels, logits, mask)
    if known is not None:  # external sets are small: the mean gets a patient-clustered interval
        auroc["bootstrap"] = masked_bootstrap_mean(labels, logits, mask, known[1])
    metrics: dict[str, Any] = {"schema_version": METRICS_SCHEMA, "split": split, "num_samples": len(labels)}
    metrics["auroc"] = auroc
    # Published numbers are NIH test numbers: never set beside another dataset's.
    published = stage.published.get("auroc") if mask is None else None
    pids, how = patients_of(keys, saved)
    if mask is not None or other_set:  # another shard set: which one (run/external.py keys on its hash)
        header = read_json(loader.reader.root / "_dataset.json")
        metrics["shards"] = str(loader.reader.root)
        metrics["shards_config_hash"] = header.get("config_hash")
        metrics["dataset"] = header.get("dataset", "nih")
    if mask is not None:
        (out / "auroc.md").write_text(auroc_table_md({"ours": auroc}) + "\n")
    else:
        metrics["intervals"] = auroc_intervals(labels, logits, pids) | {"patients": how}
        (out / "auroc.md").write_text(intervals_table_md(metrics["intervals"], published) + "\n")
    plot_roc(labels, logits, out / "roc.png")
    images = {f"{split}/roc": str(out / "roc.png")}
    if split == "bbox":
        metrics["localization"], overlays = _localize(placed["maps"], loader, ctx.cfg.eval, out)
        metrics["localization_intervals"] = localization_intervals(metrics["localization"], dict(zip(keys, pids)))
        images |= overlays
        # the per-(image, class) FP counts go beside metrics.json, not into it (eval/pairs_file.py)
        metrics["localization"] = write_pairs(metrics["localization"], out)
    _write_json(out / "metrics.json", metrics)
    return metrics, images, published


def _log_split(
    ctx: StageContext,
    split: str,
    loader: BaseLoader,
    logits: np.ndarray,
    metrics: dict[str, Any],
    images: dict[str, str],
    published: Any,
    prefix: str,
) -> None:
    """Rank 0: the split's headline scalars, images, AUROC and ROC tables (and the bbox images table) to the tracker."""
    labels, keys = loader.reader.labels, list(loader.reader.keys)
    ctx.tracker.log(_headline(split, metrics), step=0, prefix=prefix)
    ctx.tracker.log_images(images, step=0, prefix=prefix)
    ctx.tracker.log_table(f"{prefix}/{split}/auroc", *_auroc_table(metrics, published))
    ctx.tracker.log_table(
        f"{prefix}/{split}/roc_curve", ROC_COLUMNS, roc_points(labels, logits), line=ROC_COLUMNS[1:] + ROC_COLUMNS[:1]
    )
    if "localization" in metrics:
        by_key = {k.rsplit("/", 1)[-1]: f"{prefix}/{k}" for k in images if k.startswith("boxes/")}
        first = f"{float(ctx.cfg.eval.thresholds[0]):g}"  # the key format of the localization results
        rows = bbox_image_rows(keys, labels, logits, metrics["localization"]["per_box"], first, by_key)
        ctx.tracker.log_table(f"{prefix}/{split}/images", BBOX_COLUMNS, rows)


def _patient_ids(loader: BaseLoader) -> np.ndarray | None:
    """Each sample's patient id from its shard metadata; None if any sample has none (older or external shards)."""
    ids = [loader.reader.meta(i).get("patient_id") for i in range(len(loader.reader))]
    return None if any(i is None for i in ids) else np.asarray(ids)


def _headline(split: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """The scalars logged for a split: mean AUROC (with its CI on NIH), per class, fixed-threshold localization."""
    auroc = metrics["auroc"]
    out = {f"{split}/auroc_mean": auroc["mean"]} | {f"{split}/auroc/{k}": v for k, v in auroc["per_class"].items()}
    if "intervals" in metrics:
        lo, hi = metrics["intervals"]["mean"]["bootstrap"]
        out |= {f"{split}/auroc_mean_ci_low": lo, f"{split}/auroc_mean_ci_high": hi}
    if "localization" in metrics:  # fixed thresholds only: the oracle variant is never a headline
        out |= {f"{split}/{k}": v for k, v in fixed_threshold_summary(metrics["localization"]).items()}
    for thr, figs in metrics.get("localization_intervals", {}).items():  # the same headlines' patient-bootstrap CIs
        pairs = (("acc_at_iou>0.3", f"acc_at_iou0.3_mean_over_classes_T{thr}"),
                 ("best_box_iou", f"best_box_iou_mean_over_boxes_T{thr}"))  # fmt: skip
        for fig, key in pairs:
            lo, hi = figs[fig]["ci"]
            out |= {f"{split}/{key}_ci_low": lo, f"{split}/{key}_ci_high": hi}
    return out


def _auroc_table(metrics: dict[str, Any], published: Any) -> tuple[list[str], list[list[Any]]]:
    """The W&B table of a split: per class AUROC, positives, patient-bootstrap and DeLong CIs (NIH), published."""
    if "intervals" not in metrics:
        per_class = metrics["auroc"]["per_class"]
        return ["class", "auroc", "published"], [[n, per_class.get(n), (published or {}).get(n)] for n in LABELS]
    iv = metrics["intervals"]
    columns = ["class", "positives", "auroc", "ci_low", "ci_high", "delong_low", "delong_high", "published"]
    rows = [[n, r["positives"], r["auroc"], *r["bootstrap"], *r["delong"], (published or {}).get(n)]
            for n, r in iv["per_class"].items()]  # fmt: skip
    return columns, rows + [["Mean", None, iv["mean"]["auroc"], *iv["mean"]["bootstrap"], None, None, None]]


def fixed_threshold_summary(loc: dict[str, Any]) -> dict[str, float | None]:
    """The headline localization figures of a DONE.json / W&B summary: one per fixed binarisation threshold.

    kim2021 accuracy at T(IoU) 0.3 (mean over classes, kim's Mean) and fang2021's best-box IoU (mean over boxes, as
    fang's 0.3014). The oracle variant (threshold chosen per box with the ground truth) is never a headline.
    """
    out: dict[str, float | None] = {}
    for thr in (t for t in loc[ACC_AT_IOU] if t != ORACLE):
        out[f"acc_at_iou0.3_mean_over_classes_T{thr}"] = loc[ACC_AT_IOU][thr]["0.3"]["mean_over_classes"]
        out[f"best_box_iou_mean_over_boxes_T{thr}"] = loc[BEST_BOX_IOU][thr]["mean_over_boxes"]
    return out


def evaluate_model(
    ctx: StageContext, stage: EvalStage, out_root: Path | None = None, prefix: str | None = None
) -> dict[str, Any]:
    """Run the configured evaluation splits; return a summary for DONE.json (``prefix``: of the W&B keys, see
    :func:`evaluate_split`)."""
    weights = stage.weights(ctx)
    model = load_trained(stage.build_model(ctx), weights, ctx.env.device)
    out_root = out_root or ctx.stage_dir
    summary: dict[str, Any] = {"weights": str(weights)}
    for split in ctx.cfg.eval.splits:
        m = evaluate_split(ctx, model, stage, split, out_root / split, prefix)
        if m is not None:
            summary[split] = {"auroc_mean": m["auroc"]["mean"], "dir": str(out_root / split)}
            if "localization" in m:
                summary[split] |= fixed_threshold_summary(m["localization"])
    return dist.broadcast_object(summary)
