"""A user's image file → the 8-bit grey image the shard writer would have stored for it.

This is the input side of "use a trained model": files named by the user (a file, a folder read recursively,
or a glob) are read into the same (H, W) uint8 grey image the shard writer makes from an NIH PNG, so that
:func:`stored_gray` (the writer's own resize, and optionally its JPEG round trip) followed by the eval transform
gives what evaluation on a shard of that image gives. Pure reading: no torch, no method names.

Conversion rules (all stated, none guessed):

* **PNG / JPEG** (recognised by their signatures, not by the file name), through :func:`gray_from_pil`, the very
  function the shard writer decodes NIH PNGs with: 8-bit grey as is; RGB, RGBA, LA, palette and 1-bit images
  converted with PIL's ``convert("L")``, i.e. ITU-R 601-2 luma ``L = R·299/1000 + G·587/1000 + B·114/1000``
  (alpha dropped, not composited); 16-bit grey (``I;16``) scaled by the image's own maximum,
  ``round(v / max(v) · 255)`` (black stays 0; an all-zero image stays 0). EXIF orientation is not applied
  (the writer does not apply it either). CMYK and other modes are refused; a JPEG that PIL cannot decode
  (12-bit, lossless) is reported with PIL's error.
* **DICOM** (the ``DICM`` marker at byte 128, or a ``.dcm``/``.dicom``/``.dic`` name) through pydicom 3:
  refused with a reason when there is no Pixel Data (a report, a presentation state), when Modality is not a
  projection radiograph (default CR, DX, DR, RG; the caller may widen this), when it has more than one frame,
  or when it is not MONOCHROME1/MONOCHROME2 with one sample per pixel. Otherwise: the Modality LUT (rescale
  slope/intercept or a Modality LUT Sequence), then the VOI LUT Sequence if present, else the first Window
  Centre/Width (LINEAR, LINEAR_EXACT or SIGMOID), both by pydicom's ``apply_modality_lut``/``apply_voi_lut``.
  The VOI output range is mapped linearly onto 0..255: for a window its nominal output range (values below
  the window → 0, above → 255), for a LUT the range of its entries. With no VOI, the image's own min–max is
  mapped onto 0..255. MONOCHROME1 is then inverted (high = dense, as in NIH's PNGs). Unused high bits of
  12-bit stored values are masked by pydicom; compressed syntaxes decode through pydicom's plugins (RLE
  natively; JPEG, JPEG Lossless, JPEG-LS and JPEG 2000 through pylibjpeg). Presentation LUT Shape is not
  applied: it is a display preference, while Photometric Interpretation says what the stored values mean.
  Body Part Examined and View Position are not checked (vendors fill them inconsistently).

Every file that cannot be used becomes a :class:`Skip` (path, reason), never an exception: a batch goes on, and
:func:`write_skipped_csv` writes them down for the caller.
"""

from __future__ import annotations

import codecs
import csv
import io
import logging
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from cxrdist.data.format import DataError, atomic_write_bytes

RADIOGRAPH_MODALITIES = ("CR", "DX", "DR", "RG")
DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_PIL_FORMATS = {"png": ["PNG"], "jpeg": ["JPEG", "MPO"]}  # MPO: a multi-picture JPEG (phones); frame 0 is read
_GLOB_CHARS = frozenset("*?[")

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GrayImage:
    """A file read into an 8-bit grey image (full resolution) and how it was converted."""

    path: Path
    pixels: np.ndarray  # (H, W) uint8, high = dense (bone white), as in NIH's PNGs
    kind: str  # "png", "jpeg" or "dicom"
    how: str  # one line: the conversion applied (for logs and reports)


@dataclass(frozen=True)
class Skip:
    """A file that was not used, and why."""

    path: Path
    reason: str


class Refused(ValueError):
    """A file that could be read but is not an image this reader accepts (the message is the reason)."""


# ---------------------------------------------------------------------------------------------- paths


def _walk(folder: Path) -> list[Path]:
    """Every regular file under ``folder``; symlinked folders are followed, but none is entered twice (no loops)."""
    files, seen = [], set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames.clear()
            continue
        seen.add(real)
        # Regular files, and broken links so that read_image reports them; FIFOs and devices would block a read.
        files += [p for p in (Path(dirpath) / f for f in filenames) if p.is_file() or not p.exists()]
    return files


def _glob(spec: str) -> list[Path]:
    """Files matching a glob; ``**`` spans folders. pathlib's ``**`` does not follow symlinks (glob.glob's does,
    round a link loop until ELOOP); a matched folder is walked."""
    parts = Path(spec).parts
    first = next(i for i, part in enumerate(parts) if _GLOB_CHARS & set(part))
    base = Path(*parts[:first]) if first else Path(".")
    files = []
    for hit in sorted(base.glob(str(Path(*parts[first:])))):
        files += [hit] if hit.is_file() else _walk(hit)
    return files


def expand_paths(specs: Sequence[str | os.PathLike]) -> list[Path]:
    """Files named by ``specs`` (files, folders read recursively, or globs with ``**``), sorted, each file once.

    Every file found is a candidate: what is not an image is reported by :func:`read_image`, not filtered here.
    A file reached by several paths (overlapping specs, symlinks) is kept under its shortest path.
    Raises DataError naming the first spec that matches no file (before anything is read or written).
    """
    by_real: dict[str, Path] = {}
    for spec in specs:
        path = Path(spec)
        if path.is_file():
            matches = [path]
        elif path.is_dir():
            matches = _walk(path)
            if not matches:
                raise DataError(f"{spec}: the folder holds no files")
        elif _GLOB_CHARS & set(str(spec)):
            matches = _glob(str(spec))
            if not matches:
                raise DataError(f"{spec}: no file matches this pattern")
        else:
            raise DataError(f"{spec}: no such file or folder")
        for match in matches:
            kept = by_real.setdefault(os.path.realpath(match), match)
            if (len(match.parts), str(match)) < (len(kept.parts), str(kept)):
                by_real[os.path.realpath(match)] = match
    return sorted(by_real.values())


# ------------------------------------------------------------------------------------------ PNG / JPEG


def gray_from_pil(im: Image.Image) -> np.ndarray:
    """A loaded PIL image → (H, W) uint8 grey by the rules in the module docstring; Refused for other modes."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I"):
        # 16-bit grey: scaled by the image's maximum (the shard writer's rule for 16-bit NIH-style PNGs).
        arr = np.asarray(im, dtype=np.float64)
        hi = arr.max() if arr.max() > 0 else 1.0
        return np.round(np.clip(arr, 0, None) / hi * 255.0).astype(np.uint8)
    if im.mode not in ("L", "LA", "RGB", "RGBA", "P", "PA", "1"):
        raise Refused(f"image mode {im.mode!r} is not convertible to grey (8/16-bit grey, RGB(A), palette)")
    return np.asarray(im.convert("L"), dtype=np.uint8)


def _read_pil(path: Path, kind: str) -> tuple[np.ndarray, str]:
    with Image.open(path, formats=_PIL_FORMATS[kind]) as im:
        im.load()
        mode = im.mode
        gray = gray_from_pil(im)
    if mode.startswith("I"):
        rule = f"{mode} grey / its max · 255"
    else:
        rule = "8-bit grey" if mode == "L" else f"{mode} → grey (ITU-R 601-2 luma)"
    return gray, f"{kind.upper()} {rule}"


# ----------------------------------------------------------------------------------------------- DICOM


def _fix_lut_depth(ds: pydicom.Dataset) -> None:
    """Work around pydicom 3.0.2's LUT dtypes (values unchanged): it indexes an 8-bit VOI LUT with uint8, so
    entries past 255 of a 4096-entry LUT wrap silently, and a 10–15-bit Modality LUT asks numpy for a missing
    ``uint12`` dtype (pydicom PR #2326). Entries of up to 16 bits fit uint16 either way."""
    for name in ("VOILUTSequence", "ModalityLUTSequence"):
        for item in ds.get(name) or []:
            desc = item.get("LUTDescriptor")
            if desc is not None and len(desc) == 3 and desc[2] < 16:
                item.LUTDescriptor = [desc[0], desc[1], 16]


def _check_dicom(ds: pydicom.Dataset, modalities: Sequence[str]) -> None:
    """Refuse what is not a single-frame greyscale projection radiograph (reasons name the tag)."""
    modality = str(ds.get("Modality", "")).strip().upper()
    sop = ds.get("SOPClassUID")
    sop_name = getattr(sop, "name", str(sop or "unknown"))
    if "PixelData" not in ds:
        raise Refused(f"DICOM without Pixel Data (SOP class {sop_name}, Modality {modality or 'none'}): not an image")
    if modality not in modalities:
        raise Refused(
            f"DICOM Modality {modality or '(missing)'} is not a projection radiograph ({', '.join(modalities)})"
        )
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        raise Refused(f"multi-frame DICOM ({frames} frames): one radiograph per file is expected")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    samples = int(ds.get("SamplesPerPixel") or 1)
    if photometric not in ("MONOCHROME1", "MONOCHROME2") or samples != 1:
        raise Refused(
            f"colour DICOM (Photometric Interpretation {photometric or '(missing)'}, {samples} sample(s) per "
            "pixel): a radiograph is MONOCHROME1/MONOCHROME2"
        )


def _voi_range(values: np.ndarray, ds: pydicom.Dataset) -> tuple[float, float, str]:
    """The VOI output range (lo → black, hi → white) and a description, asking pydicom's own VOI function.

    A window's nominal range is what ``apply_voi_lut`` gives far below and far above it; a LUT's is the range
    of its entries (the LUT applied to its whole input domain). No VOI: the image's own min–max.
    """
    lut = (ds.get("VOILUTSequence") or [None])[0]
    if lut is not None and lut.get("LUTDescriptor") is not None and lut.get("LUTData") is not None:
        num, first = int(lut.LUTDescriptor[0]) or 2**16, int(lut.LUTDescriptor[1])
        table = apply_voi_lut(np.arange(first, first + num), ds)
        return float(table.min()), float(table.max()), f"VOI LUT ({num} entries)"
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        with np.errstate(over="ignore"):  # SIGMOID at ±1e300: exp overflows to inf, the limit is what we want
            lo, hi = apply_voi_lut(np.array([-1e300, 1e300]), ds).tolist()
        center, width = (v[0] if isinstance(v, MultiValue) else v for v in (ds.WindowCenter, ds.WindowWidth))
        return lo, hi, f"window C {float(center):g} W {float(width):g}"
    return float(values.min()), float(values.max()), "min-max"


def _read_dicom(path: Path, modalities: Sequence[str]) -> tuple[np.ndarray, str]:
    """:func:`_dicom_gray`, with pydicom's warnings (e.g. "End of file reached") added to a failure's reason."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = _dicom_gray(path, modalities)
        except Exception as e:
            if caught:
                e.add_note("[pydicom: " + "; ".join(dict.fromkeys(str(w.message) for w in caught)) + "]")
            raise
    for message in dict.fromkeys(str(w.message) for w in caught):
        logger.debug("%s: pydicom: %s", path, message)
    return result


def _dicom_gray(path: Path, modalities: Sequence[str]) -> tuple[np.ndarray, str]:
    ds = pydicom.dcmread(path, force=True)  # force: the caller has decided the file is DICOM (marker or name)
    if len(ds) == 0:
        raise Refused("no DICOM data set could be read (truncated, or not DICOM)")
    _check_dicom(ds, modalities)
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    syntax_name = getattr(syntax, "name", str(syntax or "unknown transfer syntax"))
    try:
        stored = ds.pixel_array
    except Exception as e:  # pydicom raises many types: missing plugin, bad codestream, short data
        raise Refused(f"DICOM pixel data not decodable ({syntax_name}): {type(e).__name__}: {e}") from None
    if stored.ndim != 2:
        raise Refused(f"DICOM pixel array of shape {stored.shape}: a single-frame greyscale image is expected")
    _fix_lut_depth(ds)
    values = apply_modality_lut(stored, ds)
    if ds.get("VOILUTSequence") and values.dtype.kind == "f":
        values = np.rint(values).astype(np.int64)  # a LUT is indexed by whole values (PS3.3 C.11.2.1.1)
    lo, hi, voi = _voi_range(values, ds)
    shown = apply_voi_lut(values, ds)
    frac = (shown.astype(np.float64) - lo) / (hi - lo) if hi != lo else np.zeros(shown.shape)
    photometric = str(ds.PhotometricInterpretation).strip()
    if photometric == "MONOCHROME1":
        frac = 1.0 - frac  # MONOCHROME1: the lowest value is white
    gray = np.round(np.clip(frac, 0.0, 1.0) * 255.0).astype(np.uint8)
    how = f"DICOM {ds.Modality} {photometric} {ds.get('BitsStored', '?')}-bit, {syntax_name}{_modality_lut(ds)}, {voi}"
    return gray, how


def _modality_lut(ds: pydicom.Dataset) -> str:
    """How ``apply_modality_lut`` transformed the stored values (its own precedence: the LUT, then rescale)."""
    if ds.get("ModalityLUTSequence"):
        return ", Modality LUT"
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        return f", rescale ×{float(ds.RescaleSlope):g}{float(ds.RescaleIntercept):+g}"
    return ""


# ------------------------------------------------------------------------------------------------ reading


def _looks_like_text(head: bytes) -> bool:
    try:  # incremental: the 132-byte head may end inside a multi-byte character
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\r\n\t" for c in text)


def _sniff(path: Path, head: bytes) -> str | None:
    """The file's kind from its first bytes; a DICOM name without the DICM marker counts unless it is text."""
    if head.startswith(_PNG_MAGIC):
        return "png"
    if head.startswith(_JPEG_MAGIC):
        return "jpeg"
    if head[128:132] == b"DICM":
        return "dicom"
    if path.suffix.lower() in DICOM_SUFFIXES and head and not _looks_like_text(head):
        return "dicom"  # a bare data set (no preamble), as some old exporters write
    return None


def _unrecognised(head: bytes) -> str:
    if not head:
        return "empty file (0 bytes)"
    if _looks_like_text(head):
        return "a text file, not an image (PNG, JPEG or DICOM)"
    return f"not a PNG, JPEG or DICOM file (starts with {head[:8].hex(' ')})"


def read_image(path: str | os.PathLike, *, modalities: Sequence[str] = RADIOGRAPH_MODALITIES) -> GrayImage | Skip:
    """Read one file into a :class:`GrayImage`, or a :class:`Skip` with the reason; never raises for a bad file.

    Args:
        path: the file.
        modalities: DICOM Modality values accepted as projection radiographs.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError as e:
        return Skip(path, f"cannot open the file: {e.strerror or e}")
    kind = _sniff(path, head)
    if kind is None:
        return Skip(path, _unrecognised(head))
    try:
        gray, how = _read_dicom(path, modalities) if kind == "dicom" else _read_pil(path, kind)
    except Exception as e:  # corrupt or truncated files raise many types (PIL, pydicom, numpy)
        reason = str(e) if isinstance(e, Refused) else f"corrupt or truncated {kind.upper()}: {type(e).__name__}: {e}"
        return Skip(path, " ".join([reason, *getattr(e, "__notes__", [])]))
    return GrayImage(path, gray, kind, how)


def iter_images(
    paths: Iterable[str | os.PathLike], *, modalities: Sequence[str] = RADIOGRAPH_MODALITIES
) -> Iterator[GrayImage | Skip]:
    """:func:`read_image` over ``paths``, lazily (one full-resolution image in memory at a time)."""
    for path in paths:
        yield read_image(path, modalities=modalities)


# --------------------------------------------------------------------------------- the shard's image


def resize_gray(gray: np.ndarray, size: int) -> np.ndarray:
    """The shard writer's resize: to size×size with PIL's bilinear (antialiased when shrinking); 0 keeps it."""
    im = Image.fromarray(gray)
    if size and im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(im, dtype=np.uint8)


def jpeg_bytes(gray: np.ndarray, quality: int) -> bytes:
    """The shard writer's JPEG encode of an 8-bit grey image."""
    buf = io.BytesIO()
    Image.fromarray(gray).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def stored_gray(gray: np.ndarray, size: int, quality: int | None = None) -> np.ndarray:
    """The image a shard written with (``size``, ``quality``) would hold for ``gray``, as the loader decodes it.

    ``quality=None`` stops before the JPEG encode (what predict uses: no re-encode loss); with a quality the
    writer's encode and the torch loader's PIL decode are applied too, which reproduces the shard exactly.
    """
    small = resize_gray(gray, size)
    if quality is None:
        return small
    with Image.open(io.BytesIO(jpeg_bytes(small, quality))) as im:
        return np.asarray(im.convert("L"), dtype=np.uint8)


def write_skipped_csv(skips: Iterable[Skip], path: str | os.PathLike) -> int:
    """Write ``skipped.csv`` (columns ``path``, ``reason``; header only when nothing was skipped); return the count.

    Written atomically (temp file + rename), so a killed run leaves the old file or the whole new one.
    """
    rows = list(skips)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "reason"])
    writer.writerows([str(s.path), s.reason] for s in rows)
    atomic_write_bytes(Path(path), buf.getvalue().encode())
    return len(rows)
