"""The per-(image, class) FP counts live in localization_pairs.npz beside metrics.json: read back they are the same
counts (and intervals); metrics.json that hold them inline or lack them read as before; a missing file is one line."""

from __future__ import annotations

import json
from pathlib import Path

from cxrdist.eval.compare import localization_intervals
from cxrdist.eval.pairs_file import PAIRS_FILE, read_pairs, write_pairs
from testkit.eval_runs import fake_eval_run, fake_localization, fake_shards, script


def _lines(obj: object) -> int:
    return json.dumps(obj, indent=1).count("\n") + 1


def test_the_counts_go_beside_metrics_json_and_come_back_the_same(tmp_path: Path):
    loc, patient = fake_localization(4)
    as_json = json.loads(json.dumps(loc))  # what metrics.json held inline
    slim = json.loads(json.dumps(write_pairs(loc, tmp_path)))
    assert slim["per_pair"] == {"file": PAIRS_FILE, "num_pairs": loc["num_pairs"]} and (tmp_path / PAIRS_FILE).is_file()
    assert _lines(as_json) - _lines(slim) > 10 * loc["num_pairs"] and _lines(slim["per_pair"]) == 4
    assert {k: v for k, v in slim.items() if k != "per_pair"} == {k: v for k, v in as_json.items() if k != "per_pair"}
    back = read_pairs(slim, tmp_path)
    assert back == as_json
    assert localization_intervals(back, patient, 200) == localization_intervals(loc, patient, 200)
    assert read_pairs(as_json, tmp_path) == as_json  # inline (written before): as it is
    old = {k: v for k, v in as_json.items() if k != "per_pair"}
    assert read_pairs(old, tmp_path) == old and "afp_at_iou>0.5" not in localization_intervals(old, patient, 50)["60"]
    assert write_pairs(slim, tmp_path) == slim  # already a pointer: nothing to move


def test_readers_take_both_forms_and_a_missing_file_is_one_line(tmp_path: Path, capsys):
    shards = fake_shards(tmp_path / "shards")
    a = fake_eval_run(tmp_path / "a", shards, "chexnet", 0, 1.5, bbox=4)
    b = fake_eval_run(tmp_path / "b", shards, "dcnn", 1, 0.3, bbox=20, pairs_file=False)  # an older metrics.json
    compare = script("compare")
    assert compare.main([str(a), str(b), "--resamples", "100", "--out", str(tmp_path / "cmp"), "--no-wandb"]) == 0
    cmp = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert cmp["localization"]["60"]["afp_at_iou>0.5"]["a"] is not None
    capsys.readouterr()
    (a / "eval" / "bbox" / PAIRS_FILE).unlink()
    assert script("report").main([str(a), "--out", str(tmp_path / "rep"), "--no-wandb"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{PAIRS_FILE}: missing" in err[0] and "launch/evaluate.py" in err[0], err
    assert not (tmp_path / "rep").exists()
