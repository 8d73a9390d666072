"""What a cxrdist W&B run holds, the live one (log.WandbTracker) and the consolidated one (wandb_sync.py) alike.

- **Tags and job type**: method, engine, world size, loader, cluster, shard set and split scheme as
  ``key:value`` tags, so runs filter by them in the W&B table; the job type says what the run did
  (``train``; ``evaluate`` for a live evaluation segment).
- **Step axes and headline summaries**: every stage counts its own steps (``<stage>/step``; W&B's own step
  must only grow and stages restart at 0), and the summary holds the best values, not the last:
  ``<stage>/val/val_auroc`` max, ``<stage>/val/val_loss`` min, plus ``<stage>/best/val_auroc`` and the epoch
  it was reached at (W&B's summaries have no arg-max), and the same for the val loss.
- **States**: W&B shows a run as finished only for exit code 0 and failed for any other; a run marked
  preempting (``Run.mark_preempting``) that then ends with a non-zero exit code is shown as preempted (wandb
  PR #2142; docs "Signal handling and sweep runs"). :func:`end_run` maps cxrdist's states onto that, and puts
  the state and the error line into the summary (``cxrdist/state``, ``cxrdist/error``) where the W&B table
  shows them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

STATES = ("finished", "failed", "preempted", "running")
# Exit codes that W&B turns into the state (preempted: with mark_preempting; 143 = 128 + SIGTERM, Slurm's signal).
EXIT_CODES = {"finished": 0, "failed": 1, "preempted": 143, "running": 143}
# Headline validation metrics: the key's last component → which extreme is best.
BEST = {"val_auroc": "max", "val_loss": "min"}


def run_tags(cfg: dict[str, Any], world_size: int | None = None) -> list[str]:
    """``key:value`` tags of a run from its config dict: method, engine, world size, loader, cluster, the shard
    root's folder name (``data:``) and its split scheme (``split:``, from the shard set's ``_dataset.json``)."""
    get = lambda *path: _get(cfg, path)  # noqa: E731
    tags = {
        "method": get("method", "name"),
        "engine": get("engine", "strategy"),
        "world": world_size,
        "loader": get("loader", "backend"),
        "data": Path(str(get("data", "root"))).name if get("data", "root") else None,
        "split": split_scheme(get("data", "root")),
        "cluster": get("cluster", "name"),
    }
    return [f"{k}:{v}" for k, v in tags.items() if v is not None]


def split_scheme(root: str | None) -> str | None:
    """The split scheme the shard set at ``root`` was written with (``official``, ``random-image``), or None."""
    try:
        return json.loads((Path(str(root)) / "_dataset.json").read_text())["config"].get("split_scheme")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # no shards there (yet): no tag
        return None


def _get(cfg: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = cfg
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def job_type(role: str) -> str:
    """W&B job type of a job role of the run dir (rundir.begin_attempt's ``role``)."""
    return "evaluate" if "evaluation" in role else "train"


def step_axis(row: dict[str, Any]) -> str | None:
    """The step axis (``<stage>/step``) of a metrics row, or None."""
    return next((k for k in row if k.endswith("/step")), None)


def metric_summary(key: str) -> str | None:
    """The W&B ``define_metric`` summary for ``key`` (``max``/``min`` for the headline val metrics), or None."""
    parts = key.split("/")
    if len(parts) >= 3 and parts[-2] == "val" and parts[-1] in BEST:
        return BEST[parts[-1]]
    return None


def define_axis(run: Any, axis: str) -> None:
    """Declare ``axis`` as the step of its stage's metrics on a W&B run."""
    stage = axis.rsplit("/", 1)[0]
    run.define_metric(axis)
    run.define_metric(f"{stage}/*", step_metric=axis)


def define_summaries(run: Any, keys: list[str], done: set[str]) -> None:
    """``define_metric`` with the best-value summary for each headline key not yet in ``done`` (updated)."""
    for key in keys:
        summary = metric_summary(key)
        if summary is not None and key not in done:
            axis = f"{key.split('/')[0]}/step"
            run.define_metric(key, step_metric=axis, summary=summary)
            done.add(key)


def update_best(best: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    """Fold a metrics row into ``best`` (summary key → value); return the summary entries that changed.

    For each headline key ``<stage>/val/<name>`` of the row: ``<stage>/best/<name>`` (best so far) and
    ``<stage>/best/<name>_epoch`` (the row's ``<stage>/epoch``, or its step when it has none).
    """
    changed: dict[str, Any] = {}
    for key, value in row.items():
        summary = metric_summary(key)
        if summary is None or not isinstance(value, (int, float)) or value != value:  # NaN is never best
            continue
        stage, name = key.split("/")[0], key.split("/")[-1]
        slot = f"{stage}/best/{name}"
        old = best.get(slot)
        if old is None or (value > old if summary == "max" else value < old):
            epoch = row.get(f"{stage}/epoch", row.get(f"{stage}/step"))
            changed |= {slot: value, f"{slot}_epoch": epoch}
    best.update(changed)
    return changed


def wandb_boxes(spec: dict[str, Any]) -> dict[str, Any] | None:
    """W&B's ``boxes`` argument from a stored overlay spec, or None when it has none.

    ``spec["boxes"]``: group (``ground_truth``, ``predictions``) → boxes ``{minX, maxX, minY, maxY}`` in pixels
    with ``class_id`` and ``caption``; ``spec["class_labels"]``: class id (str or int) → name. Each group
    is a layer the W&B image panel toggles, with the class labels as its legend.
    """
    if not spec.get("boxes"):
        return None
    labels = {int(k): v for k, v in spec.get("class_labels", {}).items()}
    out = {}
    for group, boxes in spec["boxes"].items():
        data = [
            {
                "position": {k: float(b[k]) for k in ("minX", "maxX", "minY", "maxY")},
                "domain": "pixel",
                "class_id": int(b["class_id"]),
                "box_caption": b.get("caption", labels.get(int(b["class_id"]), "")),
            }
            for b in boxes
        ]
        out[group] = {"box_data": data, "class_labels": labels}
    return out


def wandb_image(wandb: Any, spec: dict[str, Any]) -> Any:
    """A ``wandb.Image`` of a stored image spec (``{"path"}``, plus ``boxes``/``class_labels`` for overlays)."""
    boxes = wandb_boxes(spec)
    return wandb.Image(spec["path"], boxes=boxes) if boxes else wandb.Image(spec["path"])


def wandb_table(wandb: Any, name: str, spec: dict[str, Any]) -> Any:
    """A ``wandb.Table`` of a stored table spec (``columns``, ``rows``), or with ``spec["line"] = (x, y,
    stroke)`` W&B's line chart of it (one line per stroke value). Cells are plain values: an offline W&B run
    stores an image cell as the string "Image" (wandb 0.31), so images are logged as images, not in tables."""
    table = wandb.Table(columns=spec["columns"], data=spec["rows"])
    if spec.get("line"):
        x, y, stroke = spec["line"]
        return wandb.plot.line(table, x, y, stroke=stroke, title=name)
    return table


def end_run(run: Any, state: str, error: str | None = None) -> None:
    """End a W&B run in ``state`` (finished, failed, preempted, running) with the error line in its summary.

    ``running`` is for a consolidated snapshot of a job still in progress: ended as preempted (W&B has no
    way to leave an offline run open), with ``cxrdist/state`` saying running; the next consolidation
    replaces it.
    """
    if state not in STATES:
        raise ValueError(f"unknown run state {state!r}; one of {', '.join(STATES)}")
    run.summary["cxrdist/state"] = state
    if error:
        run.summary["cxrdist/error"] = error
    if state in ("preempted", "running"):
        run.mark_preempting()
    run.finish(exit_code=EXIT_CODES[state])
