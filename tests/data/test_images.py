"""Reading user files (PNG, JPEG, DICOM) into the grey image the shard writer stores: every format and DICOM
variant gives the same image as the 8-bit PNG, the conversion steps matter (removing one changes the result),
bad files become skip records, and predict's stored image reproduces the shard."""

from __future__ import annotations

import csv
import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.pixels import apply_voi_lut

from cxrdist.data.format import DataError
from cxrdist.data.images import (
    GrayImage,
    Skip,
    expand_paths,
    iter_images,
    read_image,
    stored_gray,
    write_skipped_csv,
)
from cxrdist.data.writer import load_gray
from testkit.dicom_variants import (
    VARIANTS,
    chest_like,
    image_dataset,
    report_dataset,
    write_dataset,
    write_dicom,
)

GRAY = chest_like()  # (80, 64) uint8 spanning 0..255
# JPEG quality 95 on GRAY (measured: max 7, mean 1.27 grey levels); the bounds leave a little room.
JPEG_MAX_ERR, JPEG_MEAN_ERR = 10, 2.0


def _read(path: Path, **kw) -> np.ndarray:
    result = read_image(path, **kw)
    assert isinstance(result, GrayImage), getattr(result, "reason", result)
    return result.pixels


def _save(path: Path, im: Image.Image, **kw) -> Path:
    im.save(path, **kw)
    return path


def _palette() -> Image.Image:
    im = Image.new("P", (GRAY.shape[1], GRAY.shape[0]))
    im.putpalette([v for i in range(256) for v in (i, i, i)])
    im.putdata(GRAY.ravel().tolist())
    return im


PIL_CASES = {
    "png8": lambda: Image.fromarray(GRAY),
    "png16": lambda: Image.fromarray(GRAY.astype(np.uint16) * 257),  # full 16-bit range
    "png12in16": lambda: Image.fromarray(GRAY.astype(np.uint16) * 16),  # 12-bit values in a 16-bit PNG
    "rgb": lambda: Image.fromarray(np.stack([GRAY] * 3, -1)),
    "rgba": lambda: Image.fromarray(np.dstack([GRAY] * 3 + [np.full_like(GRAY, 128)])),  # alpha is dropped
    "la": lambda: Image.fromarray(np.dstack([GRAY, np.full_like(GRAY, 7)])),
    "palette": _palette,
}


@pytest.mark.parametrize("case", sorted(PIL_CASES))
def test_png_variants_give_the_8bit_gray(tmp_path: Path, case: str):
    path = _save(tmp_path / f"{case}.png", PIL_CASES[case]())
    result = read_image(path)
    assert isinstance(result, GrayImage) and result.kind == "png", result
    np.testing.assert_array_equal(result.pixels, GRAY)
    np.testing.assert_array_equal(load_gray(path), GRAY)  # the shard writer reads it the same way


def test_rgb_is_itu_601_luma(tmp_path: Path):
    rgb = np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    got = _read(_save(tmp_path / "colour.png", Image.fromarray(rgb))).astype(float)
    luma = rgb @ np.array([0.299, 0.587, 0.114])
    assert np.abs(got - luma).max() <= 0.5 + 1e-9  # PIL's fixed-point luma rounds to nearest


def test_16bit_png_scales_by_its_maximum(tmp_path: Path):
    arr = np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)
    got = _read(_save(tmp_path / "dim16.png", Image.fromarray(arr)))
    np.testing.assert_array_equal(got, np.round(arr / 4000 * 255).astype(np.uint8))


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_jpeg_within_its_compression_error(tmp_path: Path, mode: str):
    path = _save(tmp_path / "x.jpg", Image.fromarray(GRAY).convert(mode), quality=95)
    result = read_image(path)
    assert isinstance(result, GrayImage) and result.kind == "jpeg"
    with Image.open(path) as im:
        np.testing.assert_array_equal(result.pixels, np.asarray(im.convert("L")))
    err = np.abs(result.pixels.astype(int) - GRAY)
    assert err.max() <= JPEG_MAX_ERR and err.mean() <= JPEG_MEAN_ERR, (err.max(), err.mean())


@pytest.mark.parametrize("variant", VARIANTS)
def test_dicom_variants_give_the_png_gray(tmp_path: Path, variant: str):
    png = _read(_save(tmp_path / "ref.png", Image.fromarray(GRAY)))
    result = read_image(write_dicom(tmp_path / f"{variant}.dcm", GRAY, variant))
    assert isinstance(result, GrayImage) and result.kind == "dicom", getattr(result, "reason", result)
    np.testing.assert_array_equal(result.pixels, png)  # exact: no tolerance needed for any variant


def test_dicom_describes_its_conversion(tmp_path: Path):
    how = _read_result(write_dicom(tmp_path / "a.dcm", GRAY, "rescale12")).how
    assert "12-bit" in how and "rescale ×2-1000" in how and "window C 3080.5 W 8161" in how
    how = _read_result(write_dicom(tmp_path / "b.dcm", GRAY, "jpeg_lossless")).how
    assert "JPEG Lossless" in how and "min-max" in how


def _read_result(path: Path) -> GrayImage:
    result = read_image(path)
    assert isinstance(result, GrayImage), result
    return result


def _rewrite(tmp_path: Path, variant: str, edit) -> Path:
    ds = image_dataset(GRAY, variant)
    edit(ds)
    return write_dataset(tmp_path / f"{variant}-edited.dcm", ds)


def _drop(*names: str):
    def edit(ds: pydicom.Dataset) -> None:
        for name in names:
            delattr(ds, name)

    return edit


def test_each_dicom_step_matters(tmp_path: Path):
    """Without the rescale, the window or the MONOCHROME1 flag the result changes: the variants test them."""
    no_rescale = _read(_rewrite(tmp_path, "rescale12", _drop("RescaleSlope", "RescaleIntercept")))
    assert np.abs(no_rescale.astype(int) - GRAY).max() > 50
    no_window = _read(_rewrite(tmp_path, "window16", _drop("WindowCenter", "WindowWidth")))
    assert np.abs(no_window.astype(int) - GRAY).max() > 50  # min-max over the outliers squeezes the image
    as_mono2 = _read(_rewrite(tmp_path, "mono1", lambda ds: setattr(ds, "PhotometricInterpretation", "MONOCHROME2")))
    np.testing.assert_array_equal(as_mono2, 255 - GRAY)
    lut_only = _read(_rewrite(tmp_path, "voilut12", _drop("WindowCenter", "WindowWidth")))  # the decoy was unused
    np.testing.assert_array_equal(lut_only, GRAY)


def test_pydicom_8bit_voi_lut_wraps_without_the_workaround(tmp_path: Path):
    """Why images._fix_lut_depth exists: pydicom 3.0.2 indexes an 8-bit VOI LUT with uint8. When this fails,
    pydicom has fixed it and the workaround can go."""
    ds = pydicom.dcmread(write_dicom(tmp_path / "lut.dcm", GRAY, "voilut12"))
    assert apply_voi_lut(ds.pixel_array, ds).max() < 16  # entries 256.. wrapped: 4080 → index 240 → 15


def test_modalities(tmp_path: Path):
    np.testing.assert_array_equal(_read(write_dicom(tmp_path / "cr.dcm", GRAY, "mono2", modality="CR")), GRAY)
    ct = write_dicom(tmp_path / "ct.dcm", GRAY, "mono2", modality="CT")
    assert "Modality CT is not a projection radiograph" in read_image(ct).reason
    np.testing.assert_array_equal(_read(ct, modalities=("CT",)), GRAY)


def test_dicom_without_preamble_is_read_by_its_name(tmp_path: Path):
    ds = image_dataset(GRAY, "mono2")
    ds.preamble = None
    ds.save_as(tmp_path / "bare.dcm", enforce_file_format=False)
    assert (tmp_path / "bare.dcm").read_bytes()[128:132] != b"DICM"
    np.testing.assert_array_equal(_read(tmp_path / "bare.dcm"), GRAY)
    os.rename(tmp_path / "bare.dcm", tmp_path / "bare.bin")  # without a DICOM name it is not guessed
    assert "not a PNG, JPEG or DICOM" in read_image(tmp_path / "bare.bin").reason


def _truncated(path: Path, cut: int) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - cut])
    return path


def _with_syntax(ds: pydicom.Dataset, uid: str) -> pydicom.Dataset:
    ds.file_meta.TransferSyntaxUID = uid
    return ds


def _multiframe() -> pydicom.Dataset:
    ds = image_dataset(GRAY, "mono2")
    ds.set_pixel_data(np.stack([GRAY, GRAY]), "MONOCHROME2", 8)
    return ds


def _rgb_dicom() -> pydicom.Dataset:
    ds = image_dataset(GRAY, "mono2")
    ds.set_pixel_data(np.stack([GRAY] * 3, -1), "RGB", 8)
    return ds


BAD_FILES = {  # name → (writer, words the reason must contain)
    "corrupt.png": (
        lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 3),
        "corrupt or truncated PNG",
    ),
    "truncated.png": (lambda p: _truncated(_save(p, Image.fromarray(GRAY)), 300), "corrupt or truncated PNG"),
    "truncated.jpg": (lambda p: _truncated(_save(p, Image.fromarray(GRAY), quality=95), 800), "truncated JPEG"),
    "cmyk.jpg": (lambda p: _save(p, Image.new("CMYK", (8, 8))), "mode 'CMYK' is not convertible"),
    "notes.txt": (lambda p: p.write_text("PatientID,Finding\n1,Nodule\n"), "a text file"),
    "notes.dcm": (lambda p: p.write_text("not really DICOM\n"), "a text file"),
    "empty.png": (lambda p: p.write_bytes(b""), "empty file"),
    "blob.bin": (lambda p: p.write_bytes(bytes(range(255, -1, -1))), "not a PNG, JPEG or DICOM"),
    "report.dcm": (lambda p: write_dataset(p, report_dataset()), "without Pixel Data (SOP class Basic Text SR"),
    "multiframe.dcm": (lambda p: write_dataset(p, _multiframe()), "multi-frame DICOM (2 frames)"),
    "rgb.dcm": (lambda p: write_dataset(p, _rgb_dicom()), "colour DICOM (Photometric Interpretation RGB"),
    "truncated.dcm": (lambda p: _truncated(write_dicom(p, GRAY, "rescale12"), 3000), "pixel data not decodable"),
    "truncated-jpegll.dcm": (
        lambda p: _truncated(write_dicom(p, GRAY, "jpeg_lossless"), 3000),
        "End of file reached before delimiter",
    ),
    "mpeg2.dcm": (
        lambda p: write_dataset(p, _with_syntax(image_dataset(GRAY, "jpeg_lossless"), "1.2.840.10008.1.2.4.100")),
        "not decodable (MPEG2",
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_files_become_skip_records(tmp_path: Path, name: str):
    make, words = BAD_FILES[name]
    make(tmp_path / name)
    result = read_image(tmp_path / name)
    assert isinstance(result, Skip) and result.path == tmp_path / name, result
    assert words in result.reason, result.reason


def test_missing_file_is_a_skip(tmp_path: Path):
    assert "cannot open the file" in read_image(tmp_path / "gone.png").reason


def _tree(tmp_path: Path) -> Path:
    root = tmp_path / "in"
    (root / "b" / "c").mkdir(parents=True)
    _save(root / "1.png", Image.fromarray(GRAY))
    write_dicom(root / "b" / "2.dcm", GRAY, "mono1")
    (root / "b" / "notes, v2.txt").write_text("not an image\n")
    _save(root / "b" / "c" / "3.jpg", Image.fromarray(GRAY), quality=95)
    write_dataset(root / "b" / "c" / "sr.dcm", report_dataset())
    (root / "b" / "c" / "loop").symlink_to(root, target_is_directory=True)  # a link loop is not re-entered
    (root / "b" / "dangling.png").symlink_to(root / "gone.png")  # listed, then reported by read_image
    return root


def test_expand_paths(tmp_path: Path):
    root = _tree(tmp_path)
    everything = expand_paths([root])
    names = ["1.png", "b/2.dcm", "b/c/3.jpg", "b/c/sr.dcm", "b/dangling.png", "b/notes, v2.txt"]
    assert everything == sorted(root / n for n in names)
    # A file, a folder and a glob overlap: each file once. Folder b reaches 1.png only through the link.
    assert expand_paths([root / "b" / "2.dcm", root / "b", str(root / "**" / "*.dcm")]) == sorted(
        root / n for n in ["b/2.dcm", "b/c/3.jpg", "b/c/sr.dcm", "b/dangling.png", "b/notes, v2.txt", "b/c/loop/1.png"]
    )
    assert expand_paths([root / "b", root]) == everything  # the shortest path of each file is kept
    assert expand_paths([str(root / "**" / "*.jpg")]) == [root / "b/c/3.jpg"]
    (tmp_path / "empty").mkdir()
    for spec, words in [
        (tmp_path / "nope", "no such file or folder"),
        (tmp_path / "empty", "the folder holds no files"),
        (str(root / "*.gif"), "no file matches this pattern"),
    ]:
        with pytest.raises(DataError, match=words):
            expand_paths([root, spec])


def test_batch_goes_on_and_skipped_csv(tmp_path: Path):
    results = list(iter_images(expand_paths([_tree(tmp_path)])))
    read = [r for r in results if isinstance(r, GrayImage)]
    skips = [r for r in results if isinstance(r, Skip)]
    assert [r.path.name for r in read] == ["1.png", "2.dcm", "3.jpg"]
    np.testing.assert_array_equal(read[1].pixels, GRAY)  # the MONOCHROME1 DICOM
    assert [s.path.name for s in skips] == ["sr.dcm", "dangling.png", "notes, v2.txt"]
    assert "cannot open the file" in skips[1].reason
    out = tmp_path / "skipped.csv"
    assert write_skipped_csv(skips, out) == 3
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows == [{"path": str(s.path), "reason": s.reason} for s in skips]
    assert write_skipped_csv([], out) == 0 and out.read_text() == "path,reason\n"


def _shard_jpegs(shard_root: Path, split: str) -> list[tuple[str, bytes]]:
    """(key, JPEG bytes) of every sample of a split, read from the tars (sample key = NIH file stem)."""
    out = []
    for tar in sorted((shard_root / split).glob("shard-*.tar")):
        with tarfile.open(tar) as tf:
            jpgs = [m for m in tf.getmembers() if m.name.endswith(".jpg")]
            out += [(m.name[: -len(".jpg")], tf.extractfile(m).read()) for m in jpgs]
    return out


def test_stored_gray_reproduces_the_shard(phantom_root: Path, shard_root: Path):
    """Predict's image (the writer's resize, no JPEG) is the shard's up to the JPEG re-encode; with the
    writer's JPEG quality it is the shard exactly."""
    samples = _shard_jpegs(shard_root, "test")
    assert len(samples) > 50
    errs = []
    for key, jpg in samples:
        with Image.open(io.BytesIO(jpg)) as im:
            shard = np.asarray(im.convert("L"))
        gray = _read(phantom_root / "images" / f"{key}.png")
        np.testing.assert_array_equal(stored_gray(gray, 64, quality=95), shard)
        errs.append(np.abs(stored_gray(gray, 64).astype(int) - shard))
    err = np.stack(errs)
    assert err.max() <= JPEG_MAX_ERR and err.mean() <= JPEG_MEAN_ERR, (err.max(), err.mean())
