"""What ``launch/report.py`` and ``launch/compare.py`` do, behind their argument parsing.

Both check every input first (a mistake raises one of ``cli.USAGE_ERRORS`` before anything is written), then
write their Markdown/JSON, print it, and log it to ONE W&B run under :mod:`cxrdist.run.report_wandb`'s rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cxrdist import cli
from cxrdist.eval.compare import comparison_table_md
from cxrdist.eval.leaderboard import (
    compare_external,
    compare_runs,
    find_runs,
    load_predictions,
    run_labels,
    write_json,
)
from cxrdist.eval.report import load_run, load_runs, write_runs_report
from cxrdist.eval.report_multi import pick_baseline
from cxrdist.run import report_wandb
from cxrdist.run.preflight import check_run_dir


def _print_logged(run_id: str, logged: report_wandb.Logged) -> None:
    state = "logged" if logged.built else "unchanged"
    print(f"W&B run {run_id} ({state}): {logged.folder or 'not written (WANDB_MODE=disabled, or see above)'}")


def report(
    paths: Sequence[Path], out: Path | None, baseline: Path | None, resamples: int, seed: int, wandb: bool | None
) -> Path:
    """Check the run dirs (or folders of them), write the report (default: the first run's ``report/``), print it,
    and log it to W&B when :func:`report_wandb.wanted`; return ``report.md``'s path."""
    cli.check_positive(resamples=resamples)
    dirs = find_runs(list(paths))
    runs = [load_run(check_run_dir(run, what="report on")) | {"label": str(run)} for run in dirs]
    if baseline is not None:
        pick_baseline(runs, baseline)
    out = out or dirs[0] / "report"
    loaded = load_runs(list(paths), resamples, seed)
    md = write_runs_report(loaded, out, baseline, resamples, seed)
    print(md.read_text())
    print(f"report written to {md} (and its PNGs beside it)")
    if report_wandb.wanted(runs, wandb):
        run_id = report_wandb.report_run_id(dirs, baseline, resamples, seed)
        _print_logged(run_id, report_wandb.log_report(loaded, out, run_id))
    return md


def _compared(a: Path, b: Path, external: str | None, resamples: int, seed: int) -> tuple[list[dict], dict[str, Any]]:
    """Both runs loaded and labelled, and their paired comparison (NIH test, or the external set ``external``)."""
    runs = [load_run(d) for d in (a, b)]
    for run, label in zip(runs, run_labels([a, b])):
        run["label"] = label
    if external is not None:
        return runs, compare_external(runs[0], runs[1], external, resamples, seed)
    for run in runs:
        run["pred"] = load_predictions(run["metrics"]["test"]["path"])
    return runs, compare_runs(runs[0], runs[1], resamples, seed)


def compare(
    run_a: Path, run_b: Path, external: str | None, out: Path | None, resamples: int, seed: int, wandb: bool | None
) -> Path:
    """Check both runs and their keys, write ``compare[-NAME].md``/``.json`` (default: RUN_A's ``report/``), print
    the table, and log it to W&B when :func:`report_wandb.wanted`; return the Markdown file's path."""
    cli.check_positive(resamples=resamples)
    a, b = (check_run_dir(r, what="compare") for r in (run_a, run_b))
    runs, cmp = _compared(a, b, external, resamples, seed)
    md = comparison_table_md(cmp, runs[0]["label"], runs[1]["label"])
    out = out or run_a / "report"
    out.mkdir(parents=True, exist_ok=True)
    stem, what = ("compare", "test") if external is None else (f"compare-{external}", external)
    (out / f"{stem}.md").write_text(f"# {runs[0]['label']} vs {runs[1]['label']} ({what})\n\n{md}\n")
    write_json(out / f"{stem}.json", cmp | {"a": str(run_a), "b": str(run_b)})
    print(md)
    print(f"written to {out / stem}.md and {stem}.json")
    if report_wandb.wanted(runs, wandb):
        run_id = report_wandb.compare_run_id(a, b, external, resamples, seed)
        _print_logged(run_id, report_wandb.log_compare(runs, cmp, out / f"{stem}.md", run_id))
    return out / f"{stem}.md"
