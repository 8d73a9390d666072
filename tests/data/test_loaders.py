"""Both loaders: exactly-once semantics, worker independence, resume, key lists, sidecars, bad input."""

from __future__ import annotations

import gc
import io
import shutil
import time
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cxrdist.data.format import DataError
from cxrdist.data.loaders.base import LoaderSpec
from cxrdist.data.loaders.factory import build_loader
from cxrdist.data.reader import ShardReader
from cxrdist.data.sampler import TrainSampler
from cxrdist.data.sidecar import create_sidecar, mark_filled, write_key_list, write_rows
from cxrdist.data.transforms import normalize_batch

TRAIN_OPS = [{"op": "resize", "size": 48}, {"op": "random_resized_crop", "size": 32}, {"op": "hflip"}]
EVAL_OPS = [{"op": "resize", "size": 40}, {"op": "center_crop", "size": 32}]
BACKENDS = ["torch", "dali"]


def spec(root: Path, split: str = "train", train: bool = True, **kw) -> LoaderSpec:
    base = dict(
        root=str(root),
        split=split,
        train=train,
        batch_per_rank=4,
        ops=TRAIN_OPS if train else EVAL_OPS,
        seed=3,
        workers=0,
    )
    base.update(kw)
    return LoaderSpec(**base)


def run_epoch(loader) -> list[tuple[np.ndarray, torch.Tensor]]:
    return [(b["index"].numpy(), b["image"]) for b in loader]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("world", [1, 2, 3])
def test_train_epoch_equal_steps_at_most_once(shard_root: Path, backend: str, world: int):
    ranks = [run_epoch(build_loader(backend, spec(shard_root), world_size=world, rank=r)) for r in range(world)]
    steps = {len(r) for r in ranks}
    assert len(steps) == 1 and steps.pop() > 0
    seen = np.concatenate([idx for r in ranks for idx, _ in r])
    assert len(seen) == len(np.unique(seen))
    loader = build_loader(backend, spec(shard_root), world_size=world, rank=0)
    assert loader.sampler.dropped_per_epoch == loader.num_samples - len(seen) < 4 * world


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("world", [1, 2, 3])
def test_eval_exactly_once(shard_root: Path, backend: str, world: int):
    seen = []
    for r in range(world):
        for b in build_loader(backend, spec(shard_root, "val", train=False), world_size=world, rank=r):
            seen.append(b["index"].numpy())
            assert b["labels"].shape[1] == 14 and b["image"].shape[1:] == (3, 32, 32)
    seen = np.concatenate(seen)
    n = build_loader("torch", spec(shard_root, "val", train=False)).num_samples
    assert sorted(seen.tolist()) == list(range(n))


@pytest.mark.parametrize("workers", [1, 2])
def test_order_independent_of_workers(shard_root: Path, workers: int):
    """Two epochs: the second reads through the same persistent workers, and still equals workers=0 bit for bit."""
    zero = build_loader("torch", spec(shard_root, workers=0))
    ref = run_epoch(zero) + run_epoch(zero)
    loader = build_loader("torch", spec(shard_root, workers=workers))
    got = run_epoch(loader) + run_epoch(loader)
    assert len(got) == len(ref)
    assert all(np.array_equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(ref, got))


def test_torch_workers_write_slots_in_place(shard_root: Path):
    """The workers write each batch into a slot of one shared pool (no new memory per batch), and a consumer slower
    than the workers (every slot written ahead of it) still gets exactly workers=0's batches."""
    ref = run_epoch(build_loader("torch", spec(shard_root, workers=0)))
    loader = build_loader("torch", spec(shard_root, workers=2))
    raw = list(loader._image_batches(0, loader._plan()[1][:1]))[0]
    pool = loader._pool
    assert pool.is_shared() and len(pool) == 2 * 2 + 1 and raw.data_ptr() == pool[0].data_ptr()
    got = []
    for b in loader:
        time.sleep(0.02)  # the workers fill every free slot meanwhile
        got.append((b["index"].numpy(), b["image"]))
    assert len(got) == len(ref) > len(pool)
    assert all(np.array_equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(ref, got))


def test_dali_cpu_batches_are_views_that_later_runs_leave_alone(shard_root: Path):
    """On the CPU the DALI loader hands over a view of the pipeline's output (no copy); batches held while the
    pipeline runs on (prefetch included) keep their values, and equal the loader's normalised batches."""
    loader = build_loader("dali", spec(shard_root))
    epoch, plan = loader._plan()
    raw = list(loader._image_batches(epoch, plan))
    assert len(raw) > 2
    ref = run_epoch(build_loader("dali", spec(shard_root)))
    assert all(torch.equal(normalize_batch(r, "imagenet", 3), b) for r, (_, b) in zip(raw, ref))


@pytest.mark.parametrize(("backend", "workers"), [("torch", 2), ("dali", 0)])
def test_pass_left_part_way(shard_root: Path, backend: str, workers: int):
    """A pass dropped after 2 batches (prefetched batches still in the workers / the DALI pipeline): the loader's
    next pass continues at batch 3 with the same images as an uninterrupted epoch, and the epoch after is intact."""
    full = build_loader(backend, spec(shard_root, workers=workers))
    ref = run_epoch(full) + run_epoch(full)
    loader = build_loader(backend, spec(shard_root, workers=workers))
    it = iter(loader)
    head = [next(it), next(it)]
    del it
    got = [(b["index"].numpy(), b["image"]) for b in head] + run_epoch(loader) + run_epoch(loader)
    assert len(got) == len(ref)
    assert all(np.array_equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(ref, got))
    first = iter(loader)
    next(first)
    second = iter(loader)
    next(second)
    with pytest.raises(RuntimeError, match="iterated twice at once"):
        next(first)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mid_epoch_resume(shard_root: Path, backend: str):
    full = build_loader(backend, spec(shard_root), world_size=2, rank=1)
    ref = run_epoch(full) + run_epoch(full)  # two epochs
    first = build_loader(backend, spec(shard_root), world_size=2, rank=1)
    it = iter(first)
    for _ in range(5):
        next(it)
    state = first.state_dict()
    assert state["consumed"] == 5 * 2 * 4 and state["epoch"] == 0
    resumed = build_loader(backend, spec(shard_root), world_size=2, rank=1)
    resumed.load_state_dict(state)
    rest = run_epoch(resumed) + run_epoch(resumed)
    assert len(rest) == len(ref) - 5
    for (ia, xa), (ib, xb) in zip(ref[5:], rest):
        assert np.array_equal(ia, ib) and torch.allclose(xa, xb, atol=1e-5)


def test_resume_with_other_world_size(shard_root: Path):
    """Saved at world 2 × batch 4, resumed at world 1 × batch 8: the same global batches, the unseen samples."""
    two = [build_loader("torch", spec(shard_root), world_size=2, rank=r) for r in range(2)]
    its = [iter(x) for x in two]
    seen = [next(it)["index"].numpy() for _ in range(3) for it in its]
    state = two[0].state_dict()
    one = build_loader("torch", spec(shard_root, batch_per_rank=8), world_size=1, rank=0)
    one.load_state_dict(state)
    rest = np.concatenate([b["index"].numpy() for b in one])
    ref = np.concatenate([b["index"].numpy() for b in build_loader("torch", spec(shard_root, batch_per_rank=8))])
    assert np.array_equal(rest, ref[len(np.concatenate(seen)) :])
    assert not set(rest) & set(np.concatenate(seen).tolist())
    three = build_loader("torch", spec(shard_root), world_size=3, rank=0)
    three.load_state_dict({**state, "consumed": 8})
    with pytest.raises(ValueError, match="not a multiple of world_size"):
        next(iter(three))


def test_sampler_global_batch_groups():
    """An optimizer step's samples are the same set at any world size (global-batch invariance)."""
    base = np.arange(50)
    s1 = TrainSampler(base, world_size=1, rank=0, batch_per_rank=8, accum=1, seed=1)
    s2 = [TrainSampler(base, world_size=2, rank=r, batch_per_rank=2, accum=2, seed=1) for r in range(2)]
    g1 = s1.remaining_batches()
    g2 = [s.remaining_batches() for s in s2]
    assert s1.steps_per_epoch * 1 == s2[0].steps_per_epoch // 2 == 6
    for k in range(6):
        step2 = np.concatenate([g2[r][2 * k + a][0] for r in range(2) for a in range(2)])
        assert sorted(g1[k][0].tolist()) == sorted(step2.tolist())


def test_batch_draw_equals_one_sample_draw(shard_root: Path):
    """A loader draws a batch's windows and flips at once; each equals that sample's own draw (its position alone
    decides), in any order."""
    loader = build_loader("torch", spec(shard_root), world_size=2, rank=1)
    indices, positions = loader.sampler.remaining_batches()[1]
    batch = loader.geometries(indices, positions, 4)
    assert batch == [loader.geometry(int(i), int(p), 4) for i, p in zip(indices, positions)]
    assert loader.geometries(indices[::-1], positions[::-1], 4) == batch[::-1] and len(set(batch)) == len(batch)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dali_equals_torch_eval_transform(shard_root: Path, backend: str):
    """Deterministic eval transform: DALI-CPU equals the torch loader within 3 grey levels (max) and 0.5 (mean).

    Both crop the same window; they differ only in the antialiasing filter when shrinking (DALI's resampling
    vs torch's antialiased bilinear). One grey level is 1/255/0.226 ≈ 0.0174 in ImageNet-normalised units.
    """
    ref = run_epoch(build_loader("torch", spec(shard_root, "test", train=False)))
    got = run_epoch(build_loader(backend, spec(shard_root, "test", train=False)))
    grey = 1 / 255 / 0.226
    for (ia, xa), (ib, xb) in zip(ref, got):
        assert np.array_equal(ia, ib)
        assert (xa - xb).abs().max() < 3 * grey and (xa - xb).abs().mean() < 0.5 * grey


def test_dali_equals_torch_train_geometry(shard_root: Path):
    """Training geometry is drawn once in Python: the two backends agree up to resampling rounding."""
    ref = run_epoch(build_loader("torch", spec(shard_root)))
    got = run_epoch(build_loader("dali", spec(shard_root)))
    diff = torch.cat([(a[1] - b[1]).abs().flatten() for a, b in zip(ref, got)])
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(ref, got))
    assert diff.max() < 3 / 255 / 0.226 and diff.mean() < 0.5 / 255 / 0.226


@pytest.mark.parametrize(("backend", "workers"), [("torch", 1), ("dali", 0)])
def test_kept_workers_and_pipeline_go_with_their_loader(shard_root: Path, backend: str, workers: int):
    """The persistent workers / the reused DALI pipeline hold no reference back to the loader: dropping the loader
    frees it (and with it them) without waiting for the cycle collector."""
    loader = build_loader(backend, spec(shard_root, workers=workers))
    run_epoch(loader)
    gone = weakref.ref(loader)
    gc.disable()
    try:
        del loader
        assert gone() is None
    finally:
        gc.enable()


@pytest.mark.parametrize("backend", BACKENDS)
def test_uint8_resample_is_opt_in_and_close(shard_root: Path, backend: str):
    """``resample="uint8"`` (opt-in): the same samples, each within 3 grey levels (0.5 on average) of the exact float
    path; the torch loader's 8-bit batch is PIL's own resize of the window, bit for bit; a bad value is refused."""
    ref = run_epoch(build_loader("torch", spec(shard_root)))
    loader = build_loader(backend, spec(shard_root, resample="uint8"))
    got = run_epoch(loader)
    grey = 1 / 255 / 0.226
    assert [a[0].tolist() for a in ref] == [b[0].tolist() for b in got]
    diff = torch.cat([(a[1] - b[1]).abs().flatten() for a, b in zip(ref, got)])
    assert 0 < diff.max() < 3 * grey and diff.mean() < 0.5 * grey
    if backend == "torch":
        i, p = int(got[0][0][0]), 0
        g = loader.geometry(i, p, 0)
        with Image.open(io.BytesIO(loader.reader.jpeg(i))) as im:
            pil = im.crop((g.x0, g.y0, g.x0 + g.w, g.y0 + g.h)).resize((g.out, g.out), Image.Resampling.BILINEAR)
        pil = torch.from_numpy(np.array(pil.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if g.flip else pil))
        assert torch.equal(got[0][1][0], normalize_batch(pil.float()[None, None], "imagenet", 3)[0])
    with pytest.raises(ValueError, match="resample 'int8'"):
        build_loader(backend, spec(shard_root, resample="int8"))


def test_oversampled_key_list(shard_root: Path, tmp_path: Path):
    plain = build_loader("torch", spec(shard_root))
    keys = plain.reader.keys[:5]
    write_key_list(tmp_path / "b.txt", keys)
    over = build_loader("torch", spec(shard_root, oversample_keys=str(tmp_path / "b.txt"), batch_per_rank=1))
    assert len(over.sampler.base) == plain.num_samples + 5
    seen = np.concatenate([b["index"].numpy() for b in over])
    counts = np.bincount(seen, minlength=plain.num_samples)
    assert (counts[:5] == 2).all() and (counts[5:] == 1).all()
    restricted = build_loader("torch", spec(shard_root, restrict_keys=str(tmp_path / "b.txt"), batch_per_rank=1))
    assert sorted(np.concatenate([b["index"].numpy() for b in restricted]).tolist()) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("backend", BACKENDS)
def test_sidecar_join(shard_root: Path, tmp_path: Path, backend: str):
    loader = build_loader("torch", spec(shard_root, "val", train=False))
    n, keys = loader.num_samples, loader.reader.keys
    vec, img = tmp_path / "affine", tmp_path / "mask"
    create_sidecar(vec, keys, (5,), "float32", "vector")
    create_sidecar(img, keys, (16, 16), "float32", "image")
    rows = np.arange(n * 5, dtype=np.float32).reshape(n, 5)
    write_rows(vec, np.arange(n), rows)
    write_rows(img, np.arange(n), np.ones((n, 16, 16), np.float32))
    mark_filled(vec, np.arange(n))
    with pytest.raises(DataError, match="never written"):
        build_loader(backend, spec(shard_root, "val", train=False, sidecars={"affine": str(vec), "mask": str(img)}))
    mark_filled(img, np.arange(n))
    joined = build_loader(
        backend, spec(shard_root, "val", train=False, sidecars={"affine": str(vec), "mask": str(img)})
    )
    for b in joined:
        assert torch.equal(b["affine"], torch.from_numpy(rows[b["index"].numpy()]))
        assert b["mask"].shape == (len(b["index"]), 1, 32, 32) and torch.allclose(b["mask"], torch.ones(1))


# --- bad input ------------------------------------------------------------------------------------------------


@pytest.fixture()
def bad_shards(shard_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "s"
    shutil.copytree(shard_root, root)
    return root


def _timed_error(backend: str, s: LoaderSpec, match: str) -> None:
    t0 = time.time()
    with pytest.raises(DataError, match=match):
        for _ in build_loader(backend, s):
            pass
    assert time.time() - t0 < 20


@pytest.mark.parametrize("backend", BACKENDS)
def test_truncated_shard(bad_shards: Path, backend: str):
    tar = bad_shards / "val" / "shard-000000.tar"
    tar.write_bytes(tar.read_bytes()[:2000])
    _timed_error(backend, spec(bad_shards, "val", train=False), r"shard-000000.tar: truncated")


@pytest.mark.parametrize("backend", BACKENDS)
def test_undecodable_jpeg_names_key(bad_shards: Path, backend: str):
    tar = bad_shards / "val" / "shard-000000.tar"
    idx_line = (bad_shards / "val" / "shard-000000.idx").read_text().splitlines()[2]
    _, off, size, name = idx_line.split()[:4]
    data = bytearray(tar.read_bytes())
    data[int(off) : int(off) + int(size)] = b"\x00" * int(size)
    tar.write_bytes(bytes(data))
    key = name.split(".")[0]
    _timed_error(backend, spec(bad_shards, "val", train=False), rf"shard-000000.tar: {key}: undecodable JPEG")


def _write_idx_and_manifest(idx: Path, text: str) -> None:
    """A bad .idx whose manifest checksum matches (a writer that wrote it so), to reach the index checks."""
    import hashlib
    import json

    idx.write_text(text)
    info = idx.parent / "_info.json"
    d = json.loads(info.read_text())
    for s in d["shards"]:
        if s["shard"] == idx.with_suffix(".tar").name:
            s["idx_sha256"] = hashlib.sha256(text.encode()).hexdigest()
    info.write_text(json.dumps(d))


def test_idx_not_matching_and_missing_component(bad_shards: Path):
    idx = bad_shards / "val" / "shard-000000.idx"
    lines = idx.read_text().splitlines()
    bad = [lines[0], lines[1].replace(" cls ", " xyz ").replace(".cls", ".xyz")] + lines[2:]
    _write_idx_and_manifest(idx, "\n".join(bad) + "\n")
    _timed_error("torch", spec(bad_shards, "val", train=False), r"lacks component\(s\) \['cls'\]")
    _write_idx_and_manifest(idx, "\n".join(lines[:-1]) + "\n")
    _timed_error("torch", spec(bad_shards, "val", train=False), "header says")


def test_swapped_idx_is_caught_on_open(bad_shards: Path):
    """Each .idx's sha256 from the manifest is checked when a split is opened: a swapped index is named there,
    not found later as an "undecodable JPEG" under the wrong key."""
    a, b = bad_shards / "train" / "shard-000000.idx", bad_shards / "train" / "shard-000001.idx"
    text_a, text_b = a.read_text(), b.read_text()
    a.write_text(text_b)
    b.write_text(text_a)
    with pytest.raises(DataError, match=r"shard-000000.idx: checksum differs from .*train/_info.json"):
        ShardReader(bad_shards, "train")


def test_shards_from_other_writer_config(bad_shards: Path):
    import json

    info = bad_shards / "val" / "_info.json"
    d = json.loads(info.read_text())
    info.write_text(json.dumps({**d, "config_hash": "0000"}))
    _timed_error("torch", spec(bad_shards, "val", train=False), "mixed shard sets")
    _timed_error("torch", spec(bad_shards, "test", train=False, expected_config_hash="abcd"), "this run was started")
