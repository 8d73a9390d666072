"""A report's leaderboard in W&B: ONE run (job type ``report``) per report, rebuilt only when its content changes.

``launch/report.py`` logs, besides ``report.md``: the leaderboard (``report/leaderboard``: one row per entry, mean
± sd of the mean AUROC over its runs; ``report/runs``: each run's mean AUROC with its patient-bootstrap CI and
whether the published mean lies in it), the per-class table (``report/per_class``: class × entry, long format),
the localization board with CIs (``report/localization``), the paired tests against the baseline
(``report/vs_baseline``), and the forest plot and published-vs-ours figure as images.

Where: as the project's tracker (cxrdist/log.py), every WANDB_* directory lies inside the report's output folder
(``OUT/wandb``), offline unless ``WANDB_MODE`` says otherwise. W&B cannot overwrite an offline run, so, as
cxrdist/run/wandb_sync.py does for a run dir, the run is built aside and switched in whole:
``OUT/wandb/report/wandb/offline-run-*-<id>`` is the report's one run, ``source.json`` beside it holds the
fingerprint of what it was built from, and re-running the same report builds nothing. The id comes from the
report's inputs (the run dirs, the baseline, the resamples and seed), so the same report synced twice, or
re-made after a run was re-evaluated, is the same W&B run, never a second one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxrdist import wandb_run
from cxrdist.eval.leaderboard import group_runs, published_mean
from cxrdist.eval.localization import ORACLE
from cxrdist.labels import LABELS
from cxrdist.log import drop_inherited_wandb_service, wandb_environment
from cxrdist.run.wandb_sync import current_folder, switch_in, wandb_env

logger = logging.getLogger(__name__)
FOLDER = Path("wandb") / "report"  # under the report's output folder
IMAGES = {"report/forest": "forest.png", "report/published_vs_ours": "report.png"}


@dataclass
class Logged:
    """Where the report's W&B run is and whether this call built it."""

    folder: Path | None  # the run's folder (None: WANDB_MODE=disabled, or W&B failed, with a warning)
    run_id: str
    built: bool


@dataclass
class RunSpec:
    """Which W&B run a logged output is: its folder under the output dir, id, job type (also its group), name."""

    folder: Path
    run_id: str
    job_type: str
    name: str
    project: str | None = None
    entity: str | None = None


def report_run_id(run_dirs: Sequence[Path], baseline: Path | None, num_resamples: int, seed: int) -> str:
    """A W&B run id from the report's inputs: the same runs, baseline and bootstrap settings give the same id."""
    inputs = {
        "runs": sorted(str(Path(d).resolve()) for d in run_dirs),
        "baseline": str(Path(baseline).resolve()) if baseline else None,
        "resamples": num_resamples,
        "seed": seed,
    }
    return "report-" + hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def wanted(runs: Sequence[dict[str, Any]], flag: bool | None) -> bool:
    """Whether to log: ``--wandb``/``--no-wandb`` if given, else as the runs did (every run's ``logger.backend`` is
    wandb), the way launch/evaluate.py logs to a run's W&B run when the run has one."""
    if flag is not None:
        return flag
    return bool(runs) and all(r["cfg"].get("logger", {}).get("backend") == "wandb" for r in runs)


def _mean(run: dict[str, Any]) -> float | None:
    iv = run.get("intervals")
    return iv["mean"]["auroc"] if iv else run["metrics"]["test"]["auroc"]["mean"]


def _stats(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None]
    return (statistics.fmean(vals) if vals else None), (statistics.stdev(vals) if len(vals) > 1 else None)


def report_tables(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The report's tables as ``{name: {columns, rows}}`` (plain values; ``None`` where undefined)."""
    groups = group_runs(runs)
    board, each, per_class = [], [], []
    for g in groups:
        avg, sd = _stats([_mean(r) for r in g["runs"]])
        pub = published_mean(g["runs"][0])
        seeds = ", ".join(str(r["cfg"].get("seed")) for r in g["runs"])
        board.append([g["label"], g["method"], len(g["runs"]), seeds, avg, sd, pub])
        for r in g["runs"]:
            ci = r["intervals"]["mean"]["bootstrap"] if r.get("intervals") else [None, None]
            hit = None if pub is None or None in ci else bool(ci[0] <= pub <= ci[1])
            each.append([g["label"], r["label"], r["cfg"].get("seed"), _mean(r), *ci, pub, hit])
        published = g["runs"][0]["cfg"]["method"].get("published", {}).get("auroc") or {}
        for name in LABELS:
            avg, sd = _stats([r["metrics"]["test"]["auroc"]["per_class"].get(name) for r in g["runs"]])
            per_class.append([name, g["label"], avg, sd, published.get(name)])
    board.sort(key=lambda row: -(row[4] or 0.0))
    loc = [[r["label"], f"heatmap > {v}", fig, f["value"], *f["ci"]]
           for r in runs for v, figs in (r.get("loc_intervals") or {}).items() if v != ORACLE
           for fig, f in figs.items()]  # fmt: skip
    tables = {
        "report/leaderboard": (["entry", "method", "runs", "seeds", "mean_auroc", "mean_auroc_sd", "published"], board),
        "report/runs": (["entry", "run", "seed", "mean_auroc", "ci_low", "ci_high", "published", "inside"], each),
        "report/per_class": (["class", "entry", "auroc", "auroc_sd", "published"], per_class),
        "report/localization": (["run", "binarisation", "figure", "value", "ci_low", "ci_high"], loc),
    }
    vs = [[r["label"], r["vs_baseline"]["mean"]["delta"], *r["vs_baseline"]["mean"]["bootstrap"],
           r["vs_baseline"]["mean"]["p"]] for r in runs if r.get("vs_baseline")]  # fmt: skip
    if vs:
        tables["report/vs_baseline"] = (["run", "delta_mean_auroc", "ci_low", "ci_high", "p"], vs)
    return {name: {"columns": cols, "rows": rows} for name, (cols, rows) in tables.items() if rows}


def _fingerprint(run_id: str, tables: dict[str, Any], summary: dict[str, Any], images: dict[str, Path]) -> str:
    digest = {k: hashlib.sha256(p.read_bytes()).hexdigest() for k, p in images.items()}
    text = json.dumps([run_id, tables, summary, digest], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _folder(target: Path) -> Path | None:
    found = sorted((target / "wandb").glob("*run-*"))
    return found[-1] if found else None


def log_report(
    runs: Sequence[dict[str, Any]], out: Path, run_id: str, project: str | None = None, entity: str | None = None
) -> Logged:
    """Log the report written to ``out`` (its runs as :func:`cxrdist.eval.report.load_runs` gives them, after
    :func:`~cxrdist.eval.report.write_runs_report`) to the one W&B run ``run_id``, unless it holds this already."""
    tables = report_tables(runs)
    images = {k: out / name for k, name in IMAGES.items() if (out / name).is_file()}
    title = (out / "report.md").read_text().splitlines()[0].removeprefix("# ")
    summary = {"report/title": title, "report/num_runs": len(runs), "report/markdown": str(out / "report.md")}
    name = out.name if out.name != "report" else f"report of {out.parent.name}"
    run = RunSpec(FOLDER, run_id, "report", name, project, entity)
    return log_run(runs, out, run, tables, images, summary)


def log_run(
    runs: Sequence[dict[str, Any]], out: Path, spec: RunSpec, tables: dict[str, Any], images: dict[str, Path],
    summary: dict[str, Any],
) -> Logged:  # fmt: skip
    """Log ``tables`` (``{name: {columns, rows}}``), ``images`` and ``summary`` of an output written to ``out`` to the
    one W&B run ``spec`` (offline under ``out/spec.folder``), unless it holds exactly this already; the project and
    entity default to the ``runs``' own when they agree. A W&B failure warns and leaves no half-built run."""
    fp = _fingerprint(spec.run_id, tables, summary, images)
    target = out / spec.folder
    if (current := current_folder(target, fp)) is not None:
        return Logged(current, spec.run_id, built=False)
    mode = wandb_environment(out)["WANDB_MODE"]
    if mode == "disabled":
        logger.info("WANDB_MODE=disabled: the %s is not logged to W&B", spec.job_type)
        return Logged(None, spec.run_id, built=False)
    build = out / "wandb" / f".building-{os.getpid()}"
    shutil.rmtree(build, ignore_errors=True)
    where = {"project": spec.project or _common(runs, "project") or "cxrdist",
             "entity": spec.entity or _common(runs, "entity")}  # fmt: skip
    try:
        _build(build, out, mode, spec, where, tables, images, summary)
    except Exception as e:  # any W&B failure: the output is written already and must not be lost over its logging
        shutil.rmtree(build, ignore_errors=True)
        logger.warning("W&B logging of the %s failed (%s: %s); it stays in %s", spec.job_type, type(e).__name__, e, out)
        return Logged(None, spec.run_id, built=False)
    switch_in(build, target, {"fingerprint": fp, "run_id": spec.run_id})
    return Logged(_folder(target), spec.run_id, built=True)


def compare_run_id(run_a: Path, run_b: Path, external: str | None, num_resamples: int, seed: int) -> str:
    """A W&B run id from a comparison's inputs (A and B in order: Δ = A − B; the set; the bootstrap settings)."""
    inputs = [str(Path(run_a).resolve()), str(Path(run_b).resolve()), external, num_resamples, seed]
    return "compare-" + hashlib.sha256(json.dumps(inputs).encode()).hexdigest()[:16]


def compare_tables(cmp: dict[str, Any], label_a: str, label_b: str) -> dict[str, dict[str, Any]]:
    """launch/compare.py's result as W&B tables: per class (with the mean as its last row) and localization."""
    cols = ["class", "positives", "auroc_a", "auroc_b", "delta", "ci_low", "ci_high", "p", "p_holm"]
    rows = [[n, r["positives"], r["auroc_a"], r["auroc_b"], r["delta"], *r["delong"], r["p"], r["p_holm"]]
            for n, r in cmp["per_class"].items()]  # fmt: skip
    m = cmp["mean"]
    rows.append(["Mean", None, m["auroc_a"], m["auroc_b"], m["delta"], *m["bootstrap"], m["p"], None])
    tables = {"compare/per_class": {"columns": cols, "rows": rows}}
    loc = [[fig, f"heatmap > {v}", r["a"], r["b"], r["delta"], *r["ci"], r["p"]]
           for v, figs in (cmp.get("localization") or {}).items() for fig, r in figs.items()]  # fmt: skip
    if loc:
        tables["compare/localization"] = {"columns": ["figure", "binarisation", "a", "b", "delta", "ci_low", "ci_high",
                                                      "p"], "rows": loc}  # fmt: skip
    return tables


def log_compare(runs: Sequence[dict[str, Any]], cmp: dict[str, Any], markdown: Path, run_id: str) -> Logged:
    """Log launch/compare.py's table (written to ``markdown``) to the one W&B run ``run_id``, job type ``compare``,
    offline under ``<markdown's folder>/wandb/<markdown's stem>``; ``runs``: A and B (labels, configs)."""
    a, b = runs
    tables = compare_tables(cmp, a["label"], b["label"])
    summary = {"compare/title": markdown.read_text().splitlines()[0].removeprefix("# "), "compare/a": str(a["dir"]),
               "compare/b": str(b["dir"]), "compare/set": cmp.get("external") or "test",
               "compare/markdown": str(markdown)}  # fmt: skip
    spec = RunSpec(Path("wandb") / markdown.stem, run_id, "compare", f"{a['label']} vs {b['label']}")
    return log_run(runs, markdown.parent, spec, tables, {}, summary)


def _common(runs: Sequence[dict[str, Any]], key: str) -> str | None:
    """The runs' ``logger.<key>`` when they all agree (the report then lands in their W&B project), else None."""
    found = {r["cfg"].get("logger", {}).get(key) for r in runs}
    return found.pop() if len(found) == 1 else None


def _build(
    build: Path, out: Path, mode: str, spec: RunSpec, where: dict[str, Any], tables: dict[str, Any],
    images: dict[str, Path], summary: dict[str, Any],
) -> None:  # fmt: skip
    """Write the run ``spec`` under ``build`` (``where``: its W&B project and entity)."""
    drop_inherited_wandb_service()  # a service of the shell/notebook that started us would hold the run (log.py)
    import wandb  # optional heavy dependency: a report without W&B never imports it

    with wandb_env(out, build, mode):
        run = wandb.init(
            **where,
            group=spec.job_type,
            name=spec.name,
            id=spec.run_id,
            resume="allow",
            job_type=spec.job_type,
            dir=str(build),
            mode=mode,
            settings=wandb.Settings(console="off", x_disable_stats=True, x_save_requirements=False),
        )
        run.log({name: wandb_run.wandb_table(wandb, name, table) for name, table in tables.items()}
                | {key: wandb.Image(str(path)) for key, path in images.items()})  # fmt: skip
        run.summary.update(summary)
        wandb_run.end_run(run, "finished")
