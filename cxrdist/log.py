"""Logging (rank-0 console, one file per rank) and the experiment tracker (W&B on rank 0, or nothing).

W&B: the run id is created once and kept in ``RUN/wandb_id.txt`` so a requeued or resubmitted job continues
the same run (group = method, name = run dir name). Every WANDB_* directory points inside ``RUN/wandb`` so
nothing lands in $HOME. Offline unless the environment says otherwise (``WANDB_MODE=online``). W&B cannot
append to an *offline* run: each job segment writes its own ``offline-run-*-<id>`` folder with the same id;
do not sync those, sync the one consolidated run of ``launch/wandb_sync.py`` (below). Online runs resume with
``resume="allow"``.

Every scalar row is also appended to ``RUN/logs/metrics.jsonl`` (rank 0), tagged with the job attempt that
wrote it (``attempt``: the run dir's attempt counter, see run/rundir.py), and a W&B failure mid-run (its service
process dies with the job's SIGTERM, a network error online) turns W&B off with one warning instead of
killing training: the metrics go on in the JSON lines file. A requeued or resubmitted job logs again the steps
it redoes; :func:`read_metrics` returns each step of each stage once, the latest attempt's values winning.
What is not a scalar goes to ``RUN/logs/tracker.jsonl``: images (paths in the run dir, with their box overlays),
tables, and how each attempt ended (finished, failed with its error, preempted). With those two files
``cxrdist.run.wandb_sync`` rebuilds ONE consolidated W&B run of the run dir (``launch/wandb_sync.py``); tags, the
best-value summaries and the run states are wandb_run.py's.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cxrdist import wandb_run

logger = logging.getLogger(__name__)
_FORMAT = "%(asctime)s %(levelname)s [rank%(rank)s] %(name)s: %(message)s"


class _RankFilter(logging.Filter):
    def __init__(self, rank: int):
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = self.rank
        return True


def setup_logging(run_dir: str | Path | None, rank: int, level: int = logging.INFO) -> None:
    """Console handler on rank 0 (warnings and errors on the others), a file per rank in ``RUN/logs``."""
    root = logging.getLogger()
    _detach(lambda h: True)
    root.setLevel(level)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(level if rank == 0 else logging.WARNING)
    handlers: list[logging.Handler] = [console]
    if run_dir is not None:
        log_dir = Path(run_dir) / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_dir / f"rank{rank}.log"))
    for h in handlers:
        h._cxrdist = True  # type: ignore[attr-defined]
        h.addFilter(_RankFilter(rank))
        h.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
        root.addHandler(h)
    for noisy in ("PIL", "matplotlib", "urllib3", "DeepSpeed", "torch.distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def close_log_files() -> None:
    """Detach and close the per-rank log files of :func:`setup_logging` (the console handler stays).

    Called when a rank's session ends, so records logged later in the same process (the launcher, a next run)
    do not land in, or reopen, a finished run's log file.
    """
    _detach(lambda h: isinstance(h, logging.FileHandler))


def _detach(which: Callable[[logging.Handler], bool]) -> None:
    """Remove and close the root logger's handlers installed by :func:`setup_logging` that ``which`` selects."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_cxrdist", False) and which(h):
            root.removeHandler(h)
            h.close()


class Tracker:
    """What the engine logs to: a no-op base (``logger=none`` and ranks other than 0)."""

    run_id: str | None = None
    location: str = "none"
    attempt: int = 0

    def log(self, metrics: dict[str, Any], step: int, prefix: str = "run") -> None:
        """Log scalars at ``step`` of a stage (``prefix``: each stage counts its own steps)."""

    def log_images(self, images: dict[str, str | dict[str, Any]], step: int, prefix: str = "run") -> None:
        """Log PNG files: name → path, or → ``{"path", "boxes", "class_labels"}`` for a box overlay (see
        :func:`cxrdist.wandb_run.wandb_boxes`)."""

    def log_table(
        self, name: str, columns: list[str], rows: list[list[Any]], line: tuple[str, str, str] | None = None
    ) -> None:
        """Log a small table of plain values; ``line=(x, y, stroke)`` draws it as a line chart, one line per
        ``stroke`` value."""

    def finish(self, state: str = "finished", error: str | None = None) -> None:
        """Flush and close; ``state``: how this job ended (finished, failed with ``error``, preempted)."""

    def preempting(self) -> None:
        """This job is being ended from outside (Slurm's SIGTERM): say so while the process still can."""


def wandb_run_id(run_dir: Path) -> str:
    """The run's W&B id, created once and kept in ``RUN/wandb_id.txt``."""
    path = Path(run_dir) / "wandb_id.txt"
    if path.is_file():
        return path.read_text().strip()
    rid = uuid.uuid4().hex[:12]
    tmp = path.with_name(".wandb_id.txt.tmp")
    tmp.write_text(rid + "\n")
    os.replace(tmp, path)
    return rid


def drop_inherited_wandb_service() -> bool:
    """Forget a W&B service token (``WANDB_SERVICE``) that another process started; True if one was dropped.

    A job inherits its submitter's environment (a shell, a notebook or pytest that used W&B). Attached to that
    process's service, a run outlives a killed attempt there, and the requeued attempt's ``wandb.init(id=…)`` is
    refused with "run ID … is in use". The token reads ``<version>-<pid of the service's owner>-…``; this process
    starts its own service when the pid is not its own.
    """
    token = os.environ.get("WANDB_SERVICE")
    if not token:
        return False
    parts = token.split("-")
    if len(parts) > 1 and parts[1] == str(os.getpid()):
        return False
    del os.environ["WANDB_SERVICE"]
    return True


def wandb_environment(run_dir: Path) -> dict[str, str]:
    """The WANDB_* variables that keep every W&B file inside the run dir (mode: offline unless set)."""
    base = Path(run_dir).resolve() / "wandb"
    env = {
        "WANDB_DIR": str(base),
        "WANDB_CACHE_DIR": str(base / "cache"),
        "WANDB_CONFIG_DIR": str(base / "config"),
        "WANDB_DATA_DIR": str(base / "data"),
        "WANDB_ARTIFACT_DIR": str(base / "artifacts"),
    }
    env["WANDB_MODE"] = os.environ.get("WANDB_MODE", "offline")
    return env


class WandbTracker(Tracker):
    """W&B run on rank 0 with a persisted id; every scalar row also goes to ``RUN/logs/metrics.jsonl``."""

    def __init__(
        self,
        run_dir: Path,
        project: str,
        entity: str | None,
        group: str,
        config: dict[str, Any],
        attempt: int = 0,
        tags: list[str] | None = None,
        job_type: str = "train",
    ):
        self.attempt = attempt
        self._run_dir = Path(run_dir)
        env = wandb_environment(run_dir)
        for k, v in env.items():
            if k != "WANDB_MODE":
                Path(v).mkdir(parents=True, exist_ok=True)
            os.environ[k] = v
        os.environ.setdefault("WANDB_SILENT", "true")
        drop_inherited_wandb_service()
        import wandb  # optional heavy dependency (logger=none runs without it)

        self.run_id = wandb_run_id(run_dir)
        self._wandb = wandb
        self._axes: set[str] = set()
        self._summaries: set[str] = set()
        self._best: dict[str, Any] = {}
        self._jsonl = Path(run_dir) / "logs" / "metrics.jsonl"
        self._jsonl.parent.mkdir(parents=True, exist_ok=True)
        self._jsonl_file = self._jsonl.open("a", buffering=1)  # line-buffered: each row is on disk at once
        self._events = (self._jsonl.parent / "tracker.jsonl").open("a", buffering=1)
        self.run = wandb.init(
            project=project,
            entity=entity,
            group=group,
            name=Path(run_dir).name,
            id=self.run_id,
            resume="allow",
            config=config,
            tags=tags,
            job_type=job_type,
            dir=env["WANDB_DIR"],
            mode=env["WANDB_MODE"],
        )
        self.location = self.run.url if env["WANDB_MODE"] == "online" and self.run.url else self.run.dir
        logger.info("W&B run %s (%s): %s", self.run_id, env["WANDB_MODE"], self.location)

    def _call(self, what: str, fn: Callable[[], Any]) -> None:
        """Run one W&B call; on failure warn once and stop using W&B (training must not die of logging)."""
        if self.run is None:
            return
        try:
            fn()
        except Exception as e:  # any W&B failure: warned once, the metrics go on in metrics.jsonl
            logger.warning(
                "W&B %s failed (%s: %s); W&B is off for the rest of this job, metrics go on in %s",
                what,
                type(e).__name__,
                e,
                self._jsonl,
            )
            self.run = None

    def _append(self, row: dict[str, Any], file: Any = None) -> None:
        stamp = {"time": round(time.time(), 3), "attempt": self.attempt}
        (file or self._jsonl_file).write(json.dumps({**stamp, **row}, default=float) + "\n")

    def _relative(self, path: str) -> str:
        p = Path(path).resolve()
        root = self._run_dir.resolve()
        return str(p.relative_to(root)) if p.is_relative_to(root) else str(p)

    def _step_key(self, prefix: str) -> str:
        # Each stage has its own step axis: W&B's own step must only grow, and stages restart at 0.
        key = f"{prefix}/step"
        if key not in self._axes:
            self._call(
                "define_metric",
                lambda: (self.run.define_metric(key), self.run.define_metric(f"{prefix}/*", step_metric=key)),
            )
            self._axes.add(key)
        return key

    def log(self, metrics: dict[str, Any], step: int, prefix: str = "run") -> None:
        row = {(k if k.startswith(f"{prefix}/") else f"{prefix}/{k}"): v for k, v in metrics.items() if v is not None}
        row[self._step_key(prefix)] = step
        self._append({**row, "wandb": self.run is not None})
        self._call("define_metric", lambda: wandb_run.define_summaries(self.run, list(row), self._summaries))
        self._call("log", lambda: self.run.log(row))
        best = wandb_run.update_best(self._best, row)
        if best:
            self._call("summary", lambda: self.run.summary.update(best))

    def log_images(self, images: dict[str, str | dict[str, Any]], step: int, prefix: str = "run") -> None:
        key = self._step_key(prefix)
        specs = {f"{prefix}/{k}": v if isinstance(v, dict) else {"path": v} for k, v in images.items()}
        stored = {k: {**v, "path": self._relative(v["path"])} for k, v in specs.items()}
        self._append({"kind": "images", "images": stored, key: step}, self._events)
        self._call(
            "log_images",
            lambda: self.run.log({**{k: wandb_run.wandb_image(self._wandb, v) for k, v in specs.items()}, key: step}),
        )

    def log_table(
        self, name: str, columns: list[str], rows: list[list[Any]], line: tuple[str, str, str] | None = None
    ) -> None:
        spec = {"columns": columns, "rows": rows, "line": line}
        self._append({"kind": "table", "name": name, **spec}, self._events)
        self._call("log_table", lambda: self.run.log({name: wandb_run.wandb_table(self._wandb, name, spec)}))

    def preempting(self) -> None:
        # Called from the SIGTERM thread; the process is then frozen until Slurm's SIGKILL: finish never runs.
        self._append({"kind": "end", "state": "preempted", "error": None}, self._events)
        self._call("mark_preempting", lambda: self.run.mark_preempting())

    def finish(self, state: str = "finished", error: str | None = None) -> None:
        self._append({"kind": "end", "state": state, "error": error}, self._events)
        self._call("finish", lambda: wandb_run.end_run(self.run, state, error))
        self._jsonl_file.close()
        self._events.close()


def build_tracker(
    backend: str,
    run_dir: Path,
    *,
    is_main: bool,
    project: str = "cxrdist",
    entity: str | None = None,
    group: str = "",
    config: dict[str, Any] | None = None,
    attempt: int = 0,
    tags: list[str] | None = None,
    job_type: str = "train",
) -> Tracker:
    """W&B on rank 0 when ``backend == 'wandb'``, else a no-op tracker; ``attempt`` tags metrics.jsonl rows."""
    if backend not in ("wandb", "none"):
        raise ValueError(f"unknown logger {backend!r}; choose wandb or none")
    if backend == "none" or not is_main:
        return Tracker()
    return WandbTracker(run_dir, project, entity, group, config or {}, attempt=attempt, tags=tags, job_type=job_type)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` (or of ``RUN/logs/metrics.jsonl`` given a run dir), each step once.

    A row is keyed by its stage's step axis (``<stage>/step``) and step. Rows of the same stage and step (an
    attempt that redid steps after a requeue, or the train and val rows of an epoch's last step) merge into one;
    for each metric the value of the latest attempt wins (within an attempt, the later row). The result is in
    order of the stages' first appearance, then step; each row holds ``attempt`` (the latest that contributed)
    and ``time`` (of its latest row). A last line cut short by a kill is skipped; rows without an attempt (older
    files) count as attempt 0.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "logs" / "metrics.jsonl"
    merged: dict[tuple[str, int], dict[str, tuple[int, Any]]] = {}
    axes: list[str] = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        axis = next((k for k in row if k.endswith("/step")), None)
        if axis is None:
            continue
        if axis not in axes:
            axes.append(axis)
        attempt = int(row.get("attempt", 0))
        slot = merged.setdefault((axis, int(row[axis])), {})
        for k, v in row.items():
            if k != "attempt" and (k not in slot or attempt >= slot[k][0]):
                slot[k] = (attempt, v)
    out = []
    for axis, step in sorted(merged, key=lambda key: (axes.index(key[0]), key[1])):
        slot = merged[(axis, step)]
        out.append({k: v for k, (_, v) in slot.items()} | {"attempt": max(a for a, _ in slot.values())})
    return out
