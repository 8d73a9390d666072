"""One W&B run per run dir: true states, best-value summaries, box overlays, and the consolidation of a job killed
and requeued twice then evaluated twice — each read back with wandb's own reader (``wandb leet inspect``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cxrdist.config import compose, save_config
from cxrdist.eval.box_overlay import box_overlay
from cxrdist.eval.tracker_tables import BBOX_COLUMNS, ROC_COLUMNS, bbox_image_rows, roc_points
from cxrdist.labels import LABEL_INDEX
from cxrdist.log import build_tracker, read_metrics
from cxrdist.run import rundir, wandb_sync
from testkit.wandb_offline import leet

REPO = Path(__file__).parents[2]


def scalar_history(records: list[dict]) -> list[dict]:
    """The history rows of the records without W&B's own keys (``_step``...) and without media/tables."""
    rows = [r["history"]["item"] for r in records if r["type"] == "history"]
    out = []
    for row in (r for r in rows if any(k.endswith("/step") for k in r)):
        media = tuple(k.removesuffix("_type") for k in row if k.endswith("._type"))  # flattened: "<key>.<field>"
        kept = {k: v for k, v in row.items() if not k.startswith("_") and not k.startswith(media or "\0")}
        if any(not k.endswith("/step") for k in kept):  # not the row of the tables (its step synced by W&B)
            out.append(kept)
    return out


def make_run_dir(run: Path, *extra: str) -> Path:
    cfg = compose(["method=chexnet", f"data.root={run.parent / 'shards'}", f"run_dir={run}", "logger=wandb", *extra])
    run.mkdir(parents=True)
    save_config(cfg, run / "config.yaml")
    return run


def attempt(run: Path, role: str = "a training job"):
    """A tracker of a new attempt of ``run``: W&B disabled (fast) — only the run dir's files matter here."""
    n = rundir.begin_attempt(run, token="t", role=role, world_size=2)
    return n, build_tracker("wandb", run, is_main=True, group="chexnet", attempt=n)


def train_segment(tracker, steps: range, val_steps: dict[int, tuple[float, float]]) -> None:
    for s in steps:
        tracker.log({"train/loss": 1.0 / s}, step=s, prefix="classify")
        if s in val_steps:
            auroc, loss = val_steps[s]
            tracker.log({"val/val_auroc": auroc, "val/val_loss": loss, "epoch": s // 2 - 1}, step=s, prefix="classify")


def evaluation(run: Path, tracker, auroc: float, image: Path) -> tuple[list, list]:
    tracker.log({"test/auroc_mean": auroc, "bbox/acc_iou0.3_T60": auroc / 2}, step=0, prefix="eval")
    spec = box_overlay(
        np.full((32, 32), 128, np.uint8),
        np.eye(8, dtype=np.float32),
        np.array([[2.0, 3.0, 10.0, 12.0]]),
        np.array([[4, 4, 9, 9]]),
        "Mass",
        image,
    )
    tracker.log_images({"boxes/Mass/k1": spec}, step=0, prefix="eval")
    tracker.log_table("eval/test/auroc", ["class", "auroc"], [["Mass", auroc]])
    labels, logits = np.eye(2, 14)[[0, 1, 0, 1]], np.arange(56.0).reshape(4, 14) * [[1], [2], [1], [3]]
    roc = roc_points(labels, logits)
    tracker.log_table("eval/test/roc_curve", ROC_COLUMNS, roc, line=("fpr", "tpr", "class"))
    per_box = {"key": ["k1"], "class_idx": [4], "best_iou": {"60": [0.25]}}
    rows = bbox_image_rows(["k1", "k2"], labels[:2], logits[:2], per_box, "60", {"k1": "eval/boxes/Mass/k1"})
    tracker.log_table("eval/bbox/images", BBOX_COLUMNS, rows)
    return roc, rows


def test_requeued_twice_then_evaluated_twice_is_one_run_with_every_row_once(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")  # the jobs' own W&B runs play no part in the consolidation
    run = make_run_dir(tmp_path / "run", "logger.log_model=true")
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "_dataset.json").write_text(json.dumps({"config": {"split_scheme": "random-image"}}))
    stage = run / "stages" / "00_classify"
    stage.mkdir(parents=True)
    (stage / "best.pt").write_bytes(b"weights")
    (stage / "DONE.json").write_text("{}")
    (run / "stages" / "01_eval").mkdir()  # not finished: no artifact
    _, t = attempt(run)  # attempt 1: steps 1-4, killed (no end)
    train_segment(t, range(1, 5), {2: (0.6, 0.9), 4: (0.8, 0.7)})
    _, t = attempt(run)  # attempt 2 resumed from step 2: redoes 3-4 (other values), reaches 6, killed
    train_segment(t, range(3, 7), {4: (0.75, 0.72), 6: (0.7, 0.5)})
    _, t = attempt(run)  # attempt 3 resumed from step 4: finishes
    train_segment(t, range(5, 9), {6: (0.7, 0.5), 8: (0.72, 0.6)})
    t.finish()
    for auroc in (0.70, 0.71):  # evaluated twice: the second evaluation's numbers win
        _, t = attempt(run, role="an evaluation")
        roc, rows = evaluation(run, t, auroc, run / "eval" / "bbox" / "heatmaps" / "boxes" / "Mass_k1.png")
        t.finish()

    monkeypatch.setenv("WANDB_MODE", "offline")
    result = wandb_sync.consolidate(run)
    assert result.built and result.plan.state == "finished"
    folders = list((run / "wandb").rglob("offline-run-*"))
    assert folders == [result.folder] and result.folder.name.endswith((run / "wandb_id.txt").read_text().strip())

    records = leet(result.folder)
    got = scalar_history(records)
    want = [
        {k: v for k, v in r.items() if k not in ("time", "attempt", "wandb")}
        | {("classify" if "classify/step" in r else "eval") + "/attempt": r["attempt"]}
        for r in read_metrics(run)
    ]
    assert got == want
    assert [r.get("classify/step", r.get("eval/step")) for r in got] == [1, 2, 3, 4, 5, 6, 7, 8, 0]
    assert got[3]["classify/val/val_auroc"] == 0.75 and got[3]["classify/attempt"] == 2  # attempt 2's redo wins
    assert got[-1]["eval/test/auroc_mean"] == 0.71 and got[-1]["eval/attempt"] == 5

    summary = leet(result.folder, summary=True)
    assert summary["state"] == "finished" and summary["run_id"] == result.plan.run_id
    s = summary["summary"]
    assert s["classify/val/val_auroc"]["max"] == 0.75 and s["classify/val/val_loss"]["min"] == 0.5
    assert s["classify/best/val_auroc"] == 0.75 and s["classify/best/val_auroc_epoch"] == 1
    assert s["classify/best/val_loss"] == 0.5 and s["classify/best/val_loss_epoch"] == 2
    assert s["cxrdist/num_attempts"] == 5 and s["cxrdist/state"] == "finished"
    image = s["eval/boxes/Mass/k1"]
    assert set(image["boxes"]) == {"ground_truth", "predictions"}
    boxes = json.loads((result.folder / "files" / image["boxes"]["ground_truth"]["path"]).read_text())
    assert boxes["box_data"][0]["position"] == {"minX": 2.0, "maxX": 10.0, "minY": 3.0, "maxY": 12.0}
    assert boxes["class_labels"] == {str(LABEL_INDEX["Mass"] + 1): "Mass"}
    assert {"method:chexnet", "world:2", "data:shards", "split:random-image"} <= set(summary["tags"])
    table = lambda key: json.loads((result.folder / "files" / s[key]["path"]).read_text())  # noqa: E731
    assert table("cxrdist/attempts")["data"][0][:3] == [1, "a training job", "preempted"]
    assert [r[2] for r in table("cxrdist/attempts")["data"]] == ["preempted"] * 2 + ["finished"] * 3
    assert table("eval/test/roc_curve_table")["data"] == roc  # the ROC points, drawn by W&B as one line per class
    charts = [r for r in records if r["type"] == "config" and "visualize" in json.dumps(r)]
    assert charts and '"eval/test/roc_curve"' in json.dumps(charts[-1])
    images = table("eval/bbox/images")["data"]
    assert images == [["k1", "Atelectasis", rows[0][2], "Mass 0.250", "eval/boxes/Mass/k1"], rows[1]]
    assert rows[0][2] == "Hernia 1.000, Pleural_Thickening 1.000, Fibrosis 1.000" and rows[1][3:] == ["", ""]

    arts = [r["artifact"] for r in records if r["type"] == "artifact" and r["artifact"]["type"] == "model"]
    assert [(a["name"], a["type"]) for a in arts] == [("run-00_classify", "model")]
    assert [e["path"] for e in arts[0]["manifest"]["contents"]] == ["best.pt"]
    again = wandb_sync.consolidate(run)  # nothing new: nothing built, the same folder
    assert not again.built and again.folder == result.folder
    assert list((run / "wandb").rglob("offline-run-*")) == [result.folder]


def test_failed_and_preempted_states(tmp_path: Path, monkeypatch):
    """The live run of a failing job is failed with its error in the summary; a consolidated run whose last
    attempt was killed without an end is preempted, one whose ranks recorded an error is failed naming the rank."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    run = make_run_dir(tmp_path / "run")
    n, t = attempt(run)
    t.log({"val/val_auroc": 0.6, "val/val_loss": 0.8, "epoch": 0}, step=2, prefix="classify")
    t.finish("failed", "ValueError: bad batch")
    live = next((run / "wandb" / "wandb").glob("offline-run-*"))
    summary = leet(live, summary=True)
    assert summary["state"] == "failed" and summary["exit_code"] == 1
    assert summary["summary"]["cxrdist/error"] == "ValueError: bad batch"
    assert summary["summary"]["classify/best/val_auroc"] == 0.6
    ends = [json.loads(line) for line in (run / "logs" / "tracker.jsonl").read_text().splitlines()]
    assert ends[-1] == ends[-1] | {"kind": "end", "state": "failed", "attempt": n}

    monkeypatch.setenv("WANDB_MODE", "disabled")
    n, t = attempt(run)  # killed: no end, no error record, nobody holds the lock → preempted
    t.log({"train/loss": 0.5}, step=3, prefix="classify")
    preempted = wandb_sync.consolidate(run)
    records = leet(preempted.folder)
    assert [r["type"] for r in records].count("preempting") == 1  # W&B shows preempted: preempting + exit ≠ 0
    assert [r["exit"]["exit_code"] for r in records if r["type"] == "exit"] == [143]
    n, t = attempt(run)  # rank 1 failed, rank 0 hung up, nothing ended the tracker (killed)
    rundir.record_error(run, n, 1, ValueError("corrupt JPEG in shard 3"))
    rundir.record_error(run, n, 0, RuntimeError("Connection closed by peer"))
    result = wandb_sync.consolidate(run)
    assert [a["state"] for a in result.plan.attempts] == ["failed", "preempted", "failed"]
    summary = leet(result.folder, summary=True)
    assert summary["state"] == "failed"
    assert summary["summary"]["cxrdist/error"].startswith("rank 1 failed: ValueError: corrupt JPEG in shard 3")


def test_cli_refuses_a_run_dir_without_wandb_records(tmp_path: Path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("x: 1\n")
    out = subprocess.run(
        [sys.executable, str(REPO / "launch" / "wandb_sync.py"), str(run), "--no-sync"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"wandb_sync.py: {run / 'wandb_id.txt'} is missing: it did not run with logger=wandb; nothing to consolidate"
    ]
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"]


@pytest.mark.parametrize("state", ["finished", "preempted"])
def test_sync_is_skipped_without_credentials_and_says_how(tmp_path: Path, monkeypatch, state: str):
    """No API key: nothing is attempted, and the line says which folder to sync where there is a network."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    folder = tmp_path / "run" / "wandb" / "consolidated"
    folder.mkdir(parents=True)
    (folder / "source.json").write_text(json.dumps({"fingerprint": "f"}))
    plan = wandb_sync.Plan("id", {}, [], {}, [], state, None)
    result = wandb_sync.sync(tmp_path / "run", wandb_sync.Result(folder / "wandb" / "offline-run-x-id", True, plan))
    assert result.synced is False and "no W&B API key" in result.sync_note
    assert f"run `wandb sync {result.folder}` where there is a network" in wandb_sync.describe(result)


def test_watch_resyncs_while_the_job_runs_and_once_more_at_its_end(tmp_path: Path, monkeypatch):
    """While a live job holds the run dir the consolidated run is a snapshot marked running; when the job ends,
    watch rebuilds it once more (finished) and stops."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    run = make_run_dir(tmp_path / "run")
    rundir.acquire_lock(run, "t")  # this process is the live job
    _, tracker = attempt(run)
    train_segment(tracker, range(1, 3), {2: (0.6, 0.9)})

    def job_goes_on(seconds: float) -> None:  # between two watch rounds: the job logs more, finishes, unlocks
        train_segment(tracker, range(3, 5), {4: (0.7, 0.8)})
        tracker.finish()
        rundir.release_lock(run, "t")

    lines: list[str] = []
    result = wandb_sync.watch(run, every_s=60.0, do_sync=False, report=lines.append, sleep=job_goes_on)
    assert len(lines) == 2 and "built, 2 rows, 1 attempts, state running" in lines[0]
    assert "built, 4 rows, 1 attempts, state finished" in lines[1]
    summary = leet(result.folder, summary=True)
    assert summary["state"] == "finished" and summary["summary"]["classify/best/val_auroc"] == 0.7
    assert list((run / "wandb").rglob("offline-run-*")) == [result.folder]


def test_sigterm_marks_the_live_run_preempted(tmp_path: Path):
    """Slurm's SIGTERM (requeue, preemption): the tracker writes the attempt's end as preempted (and asks W&B to
    mark the run preempting) before the process freezes until the kill; nothing else ends it."""
    code = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from cxrdist.run.sigterm import SIGTERM_HOOKS, hold_on_sigterm\n"
        "from cxrdist.log import build_tracker\n"
        "hold_on_sigterm(max_wait_s=3)\n"
        "t = build_tracker('wandb', Path(sys.argv[1]), is_main=True, attempt=1)\n"
        "t.log({'loss': 1.0}, step=1, prefix='train')\n"
        "SIGTERM_HOOKS.append(t.preempting)\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "signal.pause()\n"
    )
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120, env=env
    )
    assert out.returncode == 128 + 15, out.stderr
    assert "failed" not in out.stderr  # neither the hook nor W&B's mark_preempting
    ends = [json.loads(line) for line in (tmp_path / "logs" / "tracker.jsonl").read_text().splitlines()]
    assert [(e["kind"], e["state"], e["attempt"]) for e in ends] == [("end", "preempted", 1)]
