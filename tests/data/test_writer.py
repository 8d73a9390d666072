"""Shard writer: round trip on the phantom, bad input, kill + restart, DALI and webdataset read-back."""

from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cxrdist.data.format import DataError, read_index
from cxrdist.data.nih import plan_splits, read_data_entry, read_list
from cxrdist.data.verify import verify_dataset
from cxrdist.data.writer import WriterConfig, write_dataset
from cxrdist.labels import LABELS, parse_finding_labels

REPO = Path(__file__).resolve().parents[2]


def _csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def _read_all(shard_root: Path, split: str) -> dict[str, dict]:
    import webdataset as wds

    tars = sorted(str(p) for p in (shard_root / split).glob("*.tar"))
    out = {}
    for s in wds.WebDataset(tars, shardshuffle=False, empty_check=False):
        assert s["__key__"] not in out
        out[s["__key__"]] = {"cls": np.frombuffer(s["cls"], np.uint8), "json": json.loads(s["json"]), "jpg": s["jpg"]}
    return out


def test_round_trip(phantom_root: Path, shard_root: Path):
    entries = read_data_entry(phantom_root / "Data_Entry_2017_v2020.csv")
    test_list = set(read_list(phantom_root / "test_list.txt"))
    box_rows = _csv(phantom_root / "BBox_List_2017.csv")[1:]
    splits = {s: _read_all(shard_root, s) for s in ("train", "val", "test", "bbox")}
    written = [k for s in ("train", "val", "test") for k in splits[s]]
    assert sorted(written) == sorted(r.key for r in entries.values())  # every key exactly once
    assert {f"{k}.png" for k in splits["test"]} == test_list
    assert set(splits["bbox"]) == {Path(r[0]).stem for r in box_rows}
    patients = {s: {v["json"]["patient_id"] for v in splits[s].values()} for s in ("train", "val", "test")}
    assert not patients["train"] & patients["val"] and not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]
    for split in ("train", "val", "test"):
        for key, s in splits[split].items():
            rec = entries[f"{key}.png"]
            assert s["cls"].tolist() == rec.labels.tolist()
            assert s["json"]["patient_id"] == rec.patient_id and s["json"]["size"] == [64, 64]
    # Boxes: the phantom's box CSV is in its own 64 px pixels; the shards store 64 px too.
    for image, label, x, y, w, h in box_rows:
        got = splits["bbox"][Path(image).stem]["json"]["boxes"]
        want = dict(zip("xywh", map(float, (x, y, w, h))))
        assert any(
            b["label"] == label.replace("Infiltrate", "Infiltration")
            and all(abs(b[k] - want[k]) < 1e-9 for k in "xywh")
            for b in got
        )


def test_box_scaling_and_size_zero(phantom_root: Path, tmp_path: Path):
    cfg = WriterConfig(nih_root=str(phantom_root), out=str(tmp_path / "s"), size=32, samples_per_shard=500)
    write_dataset(cfg, progress=False)
    src = {Path(r[0]).stem: r for r in _csv(phantom_root / "BBox_List_2017.csv")[1:]}
    bbox = _read_all(tmp_path / "s", "bbox")
    key, meta = next((k, v["json"]) for k, v in bbox.items() if k in src)
    row = src[key]
    b = next(b for b in meta["boxes"] if b["label"] == row[1].replace("Infiltrate", "Infiltration"))
    assert meta["source_size"] == [64, 64] and meta["size"] == [32, 32]
    assert b["x"] == pytest.approx(float(row[2]) * 0.5) and b["w"] == pytest.approx(float(row[4]) * 0.5)


def test_manifest_and_verify(shard_root: Path):
    reports = verify_dataset(shard_root)
    info = json.loads((shard_root / "train" / "_info.json").read_text())
    assert info["num_samples"] == reports["train"].samples > 0
    assert set(info["label_counts"]) == set(LABELS)
    assert all(len(s["sha256"]) == 64 for s in info["shards"])
    assert json.loads((shard_root / "_dataset.json").read_text())["sources"]


def test_dali_reads_idx(shard_root: Path):
    from nvidia.dali import fn, pipeline_def, types

    tars = sorted(str(p) for p in (shard_root / "test").glob("*.tar"))

    @pipeline_def(batch_size=8, num_threads=1, device_id=None)
    def pipe():
        img, cls = fn.readers.webdataset(
            paths=tars, index_paths=[t[:-4] + ".idx" for t in tars], ext=["jpg", "cls"], name="R"
        )
        return fn.decoders.image(img, device="cpu", output_type=types.GRAY), cls

    p = pipe()
    p.build()
    img, cls = p.run()
    assert img.as_tensor().shape() == [8, 64, 64, 1] and cls.as_tensor().shape() == [8, 14]
    n = json.loads((shard_root / "test" / "_info.json").read_text())["num_samples"]
    assert p.reader_meta("R")["epoch_size"] == n


def test_idx_equals_wds2idx(shard_root: Path, tmp_path: Path):
    tar = next((shard_root / "train").glob("*.tar"))
    subprocess.run(
        [str(Path(sys.executable).parent / "wds2idx"), str(tar), str(tmp_path / "x.idx")],
        check=True,
        capture_output=True,
    )
    assert (tmp_path / "x.idx").read_text() == tar.with_suffix(".idx").read_text()
    assert len(read_index(tar.with_suffix(".idx"), tar.stat().st_size)) > 0


def test_random_image_scheme(phantom_root: Path):
    plan = plan_splits(phantom_root, scheme="random-image", test_fraction=0.3, seed=1)
    n = sum(len(plan.splits[s]) for s in ("train", "val", "test"))
    assert abs(len(plan.splits["test"]) - 0.3 * n) <= 1
    assert any("random-image" in note for note in plan.notes)


# --- bad input ------------------------------------------------------------------------------------------------


@pytest.fixture()
def bad_root(phantom_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "root"
    shutil.copytree(phantom_root, root, ignore=shutil.ignore_patterns("segmentation"))
    return root


def _rewrite_csv(path: Path, fn) -> None:
    rows = _csv(path)
    rows = fn(rows)
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)


def _write(root: Path, out: Path, **kw) -> dict:
    cfg = WriterConfig(nih_root=str(root), out=str(out), size=32, samples_per_shard=50, **kw)
    return write_dataset(cfg, progress=False)


def _first_train_image(root: Path) -> str:
    return read_list(root / "train_val_list.txt")[0]


def test_missing_image(bad_root: Path, tmp_path: Path):
    name = _first_train_image(bad_root)
    (bad_root / "images" / name).unlink()
    with pytest.raises(DataError, match=f"{name}: image file missing"):
        _write(bad_root, tmp_path / "o")


def test_corrupt_png_skip_bad(bad_root: Path, tmp_path: Path):
    name = _first_train_image(bad_root)
    (bad_root / "images" / name).write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(DataError, match=f"{name}: corrupt or undecodable"):
        _write(bad_root, tmp_path / "o")
    summary = _write(bad_root, tmp_path / "o2", skip_bad=True)
    skipped = [json.loads(line) for line in (tmp_path / "o2" / "skipped.jsonl").read_text().splitlines()]
    assert [s["key"] for s in skipped] == [Path(name).stem] and "corrupt" in skipped[0]["reason"]
    assert sum(s["num_skipped"] for s in summary.values()) == 1


def test_image_in_no_list_and_in_both(bad_root: Path, tmp_path: Path):
    tv = bad_root / "train_val_list.txt"
    names = read_list(tv)
    tv.write_text("\n".join(names[1:]) + "\n")
    with pytest.raises(DataError, match="in no split list"):
        _write(bad_root, tmp_path / "o")
    tv.write_text("\n".join(names) + "\n")
    test = bad_root / "test_list.txt"
    test.write_text(test.read_text() + names[0] + "\n")
    with pytest.raises(DataError, match=f"{names[0]}' is in both"):
        _write(bad_root, tmp_path / "o")


def test_malformed_row_duplicate_unknown_label(bad_root: Path, tmp_path: Path):
    de = bad_root / "Data_Entry_2017_v2020.csv"
    orig = de.read_text()
    _rewrite_csv(de, lambda r: r[:3] + [r[3][:5]] + r[4:])
    with pytest.raises(DataError, match=r"Data_Entry_2017_v2020.csv: line 4: expected 11 fields"):
        _write(bad_root, tmp_path / "o1")
    de.write_text(orig)
    _rewrite_csv(de, lambda r: r + [r[2]])
    with pytest.raises(DataError, match="duplicate image index"):
        _write(bad_root, tmp_path / "o2")
    de.write_text(orig)
    _rewrite_csv(de, lambda r: r[:2] + [[r[2][0], "Cardiomegally"] + r[2][2:]] + r[3:])
    with pytest.raises(DataError, match=r"csv: row 3: unknown label 'Cardiomegally'"):
        _write(bad_root, tmp_path / "o3")


def test_box_on_non_test_image(bad_root: Path, tmp_path: Path):
    name = _first_train_image(bad_root)
    _rewrite_csv(bad_root / "BBox_List_2017.csv", lambda r: r + [[name, "Mass", "1", "2", "3", "4"]])
    with pytest.raises(DataError, match=f"box on '{name}', which is not in the test list"):
        _write(bad_root, tmp_path / "o")


def test_output_from_other_config(phantom_root: Path, tmp_path: Path):
    _write(phantom_root, tmp_path / "o")
    with pytest.raises(DataError, match="different writer config.*quality"):
        _write(phantom_root, tmp_path / "o", quality=80)


def test_labels_parse_like_nih(phantom_root: Path):
    # Sanity: every label string in the phantom's CSV parses (the phantom carries real rows).
    rows = _csv(phantom_root / "Data_Entry_2017_v2020.csv")[1:]
    assert all(parse_finding_labels(r[1]).shape == (14,) for r in rows)


# --- kill and restart ------------------------------------------------------------------------------------------


def test_killed_writer_restart_gives_same_shards(phantom_root: Path, tmp_path: Path):
    args = ["--nih-root", str(phantom_root), "--size", "64", "--samples-per-shard", "1", "--workers", "1"]
    subprocess.run(
        [sys.executable, str(REPO / "launch/write_shards.py"), *args, "--out", str(tmp_path / "ref")],
        check=True,
        capture_output=True,
    )
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "launch/write_shards.py"), *args, "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 60
    while time.time() < deadline and len(list(out.glob("train/shard-*.json"))) < 2:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "test" / "_info.json").exists(), "writer finished before it was killed; test is void"
    # Also leave a complete-looking shard truncated (a partial write on a lost node): it must be rewritten.
    victim = out / "train" / "shard-000000.tar"
    victim.write_bytes(victim.read_bytes()[:700])
    subprocess.run(
        [sys.executable, str(REPO / "launch/write_shards.py"), *args, "--out", str(out)],
        check=True,
        capture_output=True,
    )
    for split in ("train", "val", "test", "bbox"):
        ref = json.loads((tmp_path / "ref" / split / "_info.json").read_text())["shards"]
        got = json.loads((out / split / "_info.json").read_text())["shards"]
        assert [s["sha256"] for s in got] == [s["sha256"] for s in ref]
    assert not list(out.rglob(".*.tmp*"))


def test_disk_full_names_the_file_and_keeps_what_was_written(
    phantom_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """ENOSPC while writing a shard: one line naming the shard, no temp file left, a rerun resumes."""
    import errno
    import os

    from cxrdist.data import format as fmt
    from cxrdist.files import WriteFailed

    real_fsync, calls = os.fsync, []

    def full_after_first_shard(fd: int) -> None:
        name = os.readlink(f"/proc/self/fd/{fd}")
        if ".tar" in name:
            calls.append(name)
            if len(calls) > 1:
                raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(fmt.os, "fsync", full_after_first_shard)
    cfg = WriterConfig(nih_root=str(phantom_root), out=str(tmp_path / "s"), size=64, samples_per_shard=40, seed=0)
    with pytest.raises(WriteFailed) as err:
        write_dataset(cfg, progress=False)
    message = str(err.value)
    assert message.startswith(f"could not write {tmp_path}/s/train/shard-000001.tar: no space left on device")
    assert "files already written are kept" in message and "\n" not in message
    assert sorted(p.name for p in (tmp_path / "s" / "train").iterdir()) == [
        "shard-000000.idx",
        "shard-000000.json",
        "shard-000000.tar",
    ]
    monkeypatch.setattr(fmt.os, "fsync", real_fsync)
    write_dataset(cfg, progress=False)  # space freed: the rerun reuses shard 0 and writes the rest
    verify_dataset(tmp_path / "s")
