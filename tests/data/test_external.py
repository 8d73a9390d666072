"""External sets: each adapter writes, verifies and loads its phantom; label maps; bad rows; uncertainty policies."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrdist.data.external import labelmap, plan
from cxrdist.data.external.common import load_gray, window16
from cxrdist.data.format import DataError
from cxrdist.data.images import gray_from_pil
from cxrdist.data.reader import ShardReader
from cxrdist.data.shard_cli import config_from_args, write_main, writer_parser
from cxrdist.data.verify import verify_dataset
from cxrdist.data.writer import WriterConfig, write_dataset
from cxrdist.labels import LABEL_INDEX, LABELS
from cxrdist.phantom.external import make_external_phantom

DATASETS = ("chexpert", "mimic", "padchest")


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One small phantom of each release (read-only: copy before editing)."""
    base = tmp_path_factory.mktemp("external")
    out = {}
    for ds in DATASETS:
        make_external_phantom(base / ds, ds, patients=16, size=48, seed=1)
        out[ds] = base / ds
    return out


def _write(root: Path, out: Path, ds: str, **kw) -> dict:
    return write_dataset(WriterConfig(nih_root=str(root), out=str(out), size=32, samples_per_shard=8, dataset=ds, **kw),
                         progress=False)  # fmt: skip


@pytest.mark.parametrize("ds", DATASETS)
def test_adapter_writes_verifies_and_loads_its_phantom(phantoms: dict[str, Path], tmp_path: Path, ds: str):
    summary = _write(phantoms[ds], tmp_path / "s", ds)
    reports = verify_dataset(tmp_path / "s")  # checksums, every image decoded, patient-disjoint splits
    header = json.loads((tmp_path / "s" / "_dataset.json").read_text())
    assert header["dataset"] == ds and header["config"]["views"] == "frontal"
    assert header["config"]["uncertain"] == "ignore"
    assert summary["test"]["num_samples"] == reports["test"].samples > 0
    filtered = [json.loads(x) for x in (tmp_path / "s" / "filtered.jsonl").read_text().splitlines()]
    assert len(filtered) == header["filtered"]["count"] > 0  # every phantom has laterals: counted, not silent
    reader = ShardReader(tmp_path / "s", "test")
    annotated = labelmap.annotated_mask(ds)
    for i in range(len(reader)):
        meta = reader.meta(i)
        mask = np.array(meta["label_mask"], dtype=np.uint8)
        assert meta["dataset"] == ds and meta["view"] not in ("Lateral", "LATERAL", "L")
        assert not (mask & ~annotated & 1).any()  # a class the set lacks is never "known"
        assert not reader.labels[i][annotated == 0].any()
        assert meta["labels"] == [LABELS[c] for c in np.flatnonzero(reader.labels[i])]
        assert Image.open(io.BytesIO(reader.jpeg(i))).size == (32, 32)


def test_verify_names_a_mask_that_hides_a_positive(phantoms: dict[str, Path], tmp_path: Path):
    import tarfile

    _write(phantoms["chexpert"], tmp_path / "s", "chexpert")
    tar_path = next((tmp_path / "s" / "test").glob("*.tar"))
    with tarfile.open(tar_path) as t:
        members = [(m, t.extractfile(m).read()) for m in t.getmembers()]
    key = next(m.name[:-4] for m, data in members if m.name.endswith(".cls") and any(data))
    bad = []
    for m, data in members:
        if m.name == f"{key}.json":
            meta = json.loads(data)
            meta["label_mask"] = [0] * 14
            data = json.dumps(meta, sort_keys=True).encode().ljust(len(data))  # same size: offsets stay valid
        bad.append((m, data))
    with tarfile.open(tar_path, "w", format=tarfile.USTAR_FORMAT) as t:
        for m, data in bad:
            t.addfile(m, io.BytesIO(data))
    info_path = tmp_path / "s" / "test" / "_info.json"
    info = json.loads(info_path.read_text())  # the checksum is made to match: the sample check must catch it
    for sh in info["shards"]:
        if sh["shard"] == tar_path.name:
            sh["sha256"] = hashlib.sha256(tar_path.read_bytes()).hexdigest()
    info_path.write_text(json.dumps(info))
    with pytest.raises(DataError, match=f"sample {key}: label_mask .* does not cover the positive labels"):
        verify_dataset(tmp_path / "s")


def test_label_map_against_the_names_the_manifests_record(phantoms: dict[str, Path], tmp_path: Path):
    for ds in DATASETS:
        _write(phantoms[ds], tmp_path / ds, ds)
        rec = json.loads((tmp_path / ds / "_dataset.json").read_text())["label_map"]
        assert rec["annotated"] == list(labelmap.annotated_classes(ds))
        assert sorted(rec["annotated"] + rec["not_annotated"]) == sorted(LABELS)
        names = set()
        reader = ShardReader(tmp_path / ds, "test")
        for i in range(len(reader)):
            src = reader.meta(i)["source_labels"]
            names |= set(src) if ds != "padchest" else set()
            if ds == "padchest":  # every finding's classes are what the map says, and the .cls holds them
                want = labelmap.padchest_vector(src["findings"])
                assert (reader.labels[i] == want).all()
        if ds != "padchest":
            assert names <= set(rec["map"]) == set(labelmap.CHEXPERT_OBSERVATIONS)
            assert {v for v in rec["map"].values() if v} == set(rec["annotated"])
    assert labelmap.CHEXPERT_MAP["Pleural Effusion"] == "Effusion" and labelmap.CHEXPERT_MAP["Lung Lesion"] is None


@pytest.mark.parametrize(
    ("finding", "classes"),
    [("pleural effusion", ["Effusion"]), ("loculated pleural effusion", ["Effusion"]), ("pericardial effusion", []),
     ("pseudonodule", []), ("multiple nodules", ["Nodule"]), ("subcutaneous emphysema", []),
     ("emphysema", ["Emphysema"]), (" Consolidation", ["Infiltration", "Consolidation"]), ("hiatal hernia", ["Hernia"]),
     ("normal", []), ("aortic elongation", [])],
)  # fmt: skip
def test_padchest_terms(finding: str, classes: list[str]):
    assert labelmap.padchest_classes(finding) == classes


def test_uncertainty_policies():
    values = {"Atelectasis": -1.0, "Pleural Effusion": 1.0, "Edema": None, "Lung Lesion": 1.0}
    a, e, ed = LABEL_INDEX["Atelectasis"], LABEL_INDEX["Effusion"], LABEL_INDEX["Edema"]
    lab, mask = labelmap.chexpert_vector(values, "ignore")
    assert (lab[a], mask[a], lab[e], mask[e], lab[ed], mask[ed]) == (0, 0, 1, 1, 0, 1)  # blank = negative
    assert mask[LABEL_INDEX["Mass"]] == 0 and lab.sum() == 1  # Lung Lesion maps to no class
    assert labelmap.chexpert_vector(values, "zeros")[1][a] == 1 and labelmap.chexpert_vector(values, "zeros")[0][a] == 0
    assert labelmap.chexpert_vector(values, "ones")[0][a] == 1
    with pytest.raises(ValueError, match="uncertain policy 'maybe'"):
        labelmap.chexpert_vector(values, "maybe")


def test_uncertain_policy_is_recorded_and_changes_labels(phantoms: dict[str, Path]):
    recs = {u: plan("mimic", phantoms["mimic"], uncertain=u).splits["test"] for u in labelmap.UNCERTAIN_POLICIES}
    masks = {u: np.stack([r.mask for r in rs]) for u, rs in recs.items()}
    labels = {u: np.stack([r.labels for r in rs]) for u, rs in recs.items()}
    assert masks["ignore"].sum() < masks["zeros"].sum() == masks["ones"].sum()
    assert (labels["zeros"] == labels["ignore"]).all() and labels["ones"].sum() > labels["zeros"].sum()
    hashes = {WriterConfig(nih_root="r", out="o", dataset="mimic", uncertain=u).content_dict()["uncertain"]
              for u in labelmap.UNCERTAIN_POLICIES}  # fmt: skip
    assert len(hashes) == 3
    assert "dataset" not in WriterConfig(nih_root="r", out="o").content_dict()  # NIH shard hashes unchanged


def test_views_all_keeps_laterals(phantoms: dict[str, Path]):
    front = plan("chexpert", phantoms["chexpert"])
    every = plan("chexpert", phantoms["chexpert"], views="all")
    n = sum(len(v) for v in front.splits.values())
    assert sum(len(v) for v in every.splits.values()) == n + len(front.filtered) and not every.filtered


def _edit_csv(path: Path, edit) -> None:
    gz = path.suffix == ".gz"
    text = gzip.decompress(path.read_bytes()).decode() if gz else path.read_text()
    rows = list(csv.DictReader(io.StringIO(text)))
    header = list(rows[0])
    rows = edit(rows, header) or rows
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=header, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    path.write_bytes(gzip.compress(buf.getvalue().encode()) if gz else buf.getvalue().encode())


def _set(col: str, value: str, line: int = 2):
    def edit(rows, header):
        rows[line - 2][col] = value

    return edit


def _drop_column(col: str):
    def edit(rows, header):
        header.remove(col)
        for r in rows:
            del r[col]

    return edit


PADCHEST_CSV = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"
BAD_ROWS = [
    ("chexpert", "train.csv", _set("Edema", "2"), "train.csv: line 2: column 'Edema': value '2'; expected 1, 0, -1"),
    ("chexpert", "valid.csv", _drop_column("Pleural Effusion"), "valid.csv: missing column(s) 'Pleural Effusion'"),
    ("chexpert", "train.csv", _set("Path", "x/y.png"), "train.csv: line 2: column 'Path': 'x/y.png' is not"),
    ("mimic", "mimic-cxr-2.0.0-split.csv.gz", _set("split", "holdout"), "column 'split': 'holdout'; expected train"),
    ("mimic", "mimic-cxr-2.0.0-chexpert.csv.gz", _set("Pneumonia", "yes"), "column 'Pneumonia': value 'yes'"),
    ("mimic", "mimic-cxr-2.0.0-metadata.csv.gz", _set("subject_id", "p1"), "column 'subject_id': 'p1' is not an"),
    ("padchest", PADCHEST_CSV, _set("Labels", "pleural effusion"), "column 'Labels': 'pleural effusion' is not a list"),
    ("padchest", PADCHEST_CSV, _drop_column("Projection"), "missing column(s) 'Projection'"),
    ("padchest", PADCHEST_CSV, _set("PatientBirth", "19x6"), "column 'PatientBirth': '19x6' is not a birth year"),
]


@pytest.mark.parametrize(("ds", "name", "edit", "message"), BAD_ROWS, ids=[f"{b[0]}-{b[3][:28]}" for b in BAD_ROWS])
def test_bad_rows_are_one_line_errors_naming_file_and_column(
    phantoms: dict[str, Path], tmp_path: Path, capsys, ds, name, edit, message
):
    root = tmp_path / ds
    shutil.copytree(phantoms[ds], root)
    _edit_csv(root / name, edit)
    out = tmp_path / "out"
    code = write_main(["--dataset", ds, "--root", str(root), "--out", str(out), "--size", "32"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not out.exists()  # refused before anything is created


def test_missing_image_is_an_error_or_a_counted_skip(phantoms: dict[str, Path], tmp_path: Path, capsys):
    root = tmp_path / "mimic"
    shutil.copytree(phantoms["mimic"], root)
    victim = plan("mimic", root).splits["test"][0]
    (root / victim.image).unlink()
    args = ["--dataset", "mimic", "--root", str(root), "--size", "32"]
    assert write_main([*args, "--out", str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err
    assert f"{victim.image}: image file missing" in err and len(err.strip().splitlines()) == 1
    assert write_main([*args, "--out", str(tmp_path / "b"), "--skip-bad"]) == 0
    skipped = [json.loads(x) for x in (tmp_path / "b" / "skipped.jsonl").read_text().splitlines()]
    assert [s["key"] for s in skipped] == [victim.key]


def test_padchest_row_without_findings_is_a_counted_filter(phantoms: dict[str, Path], tmp_path: Path):
    root = tmp_path / "padchest"
    shutil.copytree(phantoms["padchest"], root)
    _edit_csv(root / PADCHEST_CSV, _set("Labels", "['', ' ']", line=3))
    image = plan("padchest", root, views="all").filtered
    assert [f["reason"] for f in image if f["reason"].startswith("Labels lists")] == ["Labels lists no finding"]


def test_lateral_only_study_is_a_counted_filter(phantoms: dict[str, Path], tmp_path: Path):
    root = tmp_path / "chexpert"
    shutil.copytree(phantoms["chexpert"], root)
    study = next(r.study for r in plan("chexpert", root, views="all").splits["train"] if r.view == "Lateral")

    def drop_frontal(rows, header):
        return [r for r in rows if not (study + "/" in r["Path"] and r["Frontal/Lateral"] == "Frontal")]

    _edit_csv(root / "train.csv", drop_frontal)
    reasons = [f["reason"] for f in plan("chexpert", root).filtered if study in f["row"]]
    assert reasons == ["lateral-only study: no frontal image (--views frontal)"]


def test_16bit_png_by_max_or_percentile_window(tmp_path: Path):
    raw = np.linspace(1000, 3000, 64 * 64).reshape(64, 64).astype(np.uint16)
    raw[0, 0] = 65535  # one burnt-in pixel
    Image.fromarray(raw).save(tmp_path / "x.png")
    with Image.open(tmp_path / "x.png") as im:
        assert (load_gray(tmp_path / "x.png") == gray_from_pil(im)).all()  # default: the NIH writer's rule
    gray = load_gray(tmp_path / "x.png", "percentile")  # the burnt-in pixel does not darken the image
    assert gray.dtype == np.uint8 and gray.min() == 0 and gray.max() == 255
    assert abs(float(np.median(gray)) - 127.5) < 2
    assert (window16(np.full((4, 4), 7, np.uint16)) == 0).all()
    with pytest.raises(DataError, match="image file missing"):
        load_gray(tmp_path / "none.png")


def test_window_choice_is_part_of_the_writer_config(phantoms: dict[str, Path], tmp_path: Path):
    hashes = set()
    for w in ("max", "percentile"):
        _write(phantoms["padchest"], tmp_path / w, "padchest", window16=w)
        hashes.add(json.loads((tmp_path / w / "_dataset.json").read_text())["config_hash"])
    assert len(hashes) == 2
    a, b = (ShardReader(tmp_path / w, "test") for w in ("max", "percentile"))
    assert a.keys == b.keys and a.jpeg(0) != b.jpeg(0)


def test_padchest_children_are_a_counted_filter_by_default(phantoms: dict[str, Path], tmp_path: Path):
    for name, kw in (("default", {}), ("all-ages", {"min_age": 0})):
        _write(phantoms["padchest"], tmp_path / name, "padchest", **kw)
    head = {n: json.loads((tmp_path / n / "_dataset.json").read_text()) for n in ("default", "all-ages")}
    assert (head["default"]["config"]["min_age"], head["all-ages"]["config"]["min_age"]) == (10, 0)
    assert head["default"]["config_hash"] != head["all-ages"]["config_hash"]
    text = gzip.decompress((phantoms["padchest"] / PADCHEST_CSV).read_bytes()).decode()
    rows = list(csv.DictReader(io.StringIO(text)))

    def young(r: dict) -> bool:  # torchxrayvision's PC_Dataset keeps 2019 - PatientBirth > 10 (blank: dropped)
        return not r["PatientBirth"] or 2019 - float(r["PatientBirth"]) <= 10

    birth = {r["ImageID"][:-4]: r for r in rows}
    keys = {n: set(ShardReader(tmp_path / n, "test").keys) for n in head}
    gone = keys["all-ages"] - keys["default"]
    assert keys["default"] < keys["all-ages"] and all(young(birth[k]) for k in gone)
    assert not any(young(birth[k]) for k in keys["default"])
    assert {birth[k]["PatientBirth"] == "" for k in gone} == {True, False}  # the phantom has both kinds
    by_reason = head["default"]["filtered"]["by_reason"]
    counted = {r: n for r, n in by_reason.items() if r.startswith(("pediatric", "PatientBirth blank"))}
    labelled = [r for r in rows if young(r) and r["Labels"] not in ("", "['exclude']")]  # the earlier reasons win
    assert sum(counted.values()) == len(labelled) > len(gone)  # laterals of children count as children
    assert not any(r.startswith("pediatric") for r in head["all-ages"]["filtered"]["by_reason"])
    args = ["--dataset", "padchest", "--root", "r", "--out", "o"]
    assert config_from_args(writer_parser().parse_args(args)).min_age == 10  # the CLI default: torchxrayvision's
    assert config_from_args(writer_parser().parse_args([*args, "--min-age", "0"])).min_age == 0
    assert "min_age" not in WriterConfig(nih_root="r", out="o", dataset="chexpert").content_dict()
