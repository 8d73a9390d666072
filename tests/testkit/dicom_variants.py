"""Test helpers: a chest-like synthetic grey image, and that image written as the DICOM variants a hospital sends.

Each variant stores the same 8-bit grey image ``gray`` (uint8, spanning 0..255) so that a correct reader gets
``gray`` back: the stored values, rescale, window or LUT are chosen so that the DICOM display pipeline maps them
exactly onto ``gray``. ``write_dicom(path, gray, variant)`` is meant to be reused by the later predict tests.

JPEG Lossless (Process 14, selection value 1) has no encoder in pydicom 3.0 nor in the pylibjpeg plugins (they
decode it only), so :func:`encode_jpeg_lossless` is a small encoder written from ITU-T T.81 Annex H; the reader
decodes it with pylibjpeg-libjpeg, so a wrong encoder would fail the tests rather than hide a reader bug.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    RLELossless,
    generate_uid,
)

DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"

# Stored value = A * gray + B for the windowed 16-bit variant; the window maps [B, B + 255 A] onto 0..255.
WINDOW_A, WINDOW_B = 100, 5000
# 12-bit variant: stored = 16 * gray, modality value = SLOPE * stored + INTERCEPT.
SLOPE, INTERCEPT = 2.0, -1000.0

VARIANTS = (
    "mono2",  # 8-bit MONOCHROME2, no VOI
    "mono1",  # 8-bit MONOCHROME1 storing 255 - gray
    "rescale12",  # 12-bit stored, rescale slope/intercept, window given in rescaled units
    "window16",  # 16-bit stored, window centre/width, pixels far outside the window
    "voilut12",  # 12-bit stored, VOI LUT Sequence (8-bit LUT) plus a decoy window (the LUT wins)
    "jpeg_lossless",  # 12-bit, JPEG Lossless SV1 (decoded by pylibjpeg-libjpeg)
    "rle",  # 12-bit, RLE Lossless (pydicom's own codec)
    "j2k",  # 12-bit, JPEG 2000 Lossless (encoded/decoded by pylibjpeg-openjpeg)
)


def chest_like(height: int = 80, width: int = 64, seed: int = 0) -> np.ndarray:
    """A small chest-radiograph-like uint8 image: dark lungs in a bright body, a spine, ribs, noise, a marker.

    It spans exactly 0 (air outside the body) to 255 (a lead marker), like a real radiograph, so that the
    range-normalising rules (16-bit PNG scaling, DICOM min-max) are the identity on it.
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    cy, cx = height / 2, width / 2
    body = ((x - cx) / (0.45 * width)) ** 2 + ((y - cy) / (0.55 * height)) ** 2 < 1
    img = np.where(body, 170.0, 0.0)
    for side in (-1, 1):  # the two lungs
        lung = ((x - cx - side * 0.2 * width) / (0.15 * width)) ** 2 + ((y - cy + 0.05 * height) / (0.35 * height)) ** 2
        img[lung < 1] = 60.0
    img[np.abs(x - cx) < 0.05 * width] = 210.0  # spine
    img += 25.0 * (np.sin(y / 3.0) > 0.8) * body  # ribs
    img += rng.normal(0, 6, img.shape) * body
    img = np.clip(np.round(img), 1, 254)
    img[~body] = 0
    img[2:6, 2:6] = 255  # marker
    return img.astype(np.uint8)


def _huffman_code(symbols: list[int]) -> tuple[bytes, dict[int, tuple[int, int]]]:
    """A valid JPEG Huffman table giving every SSSS category 0..16 a 5-bit code (17 codes < 32, no all-ones)."""
    bits = [0] * 16
    bits[4] = len(symbols)
    table = bytes(bits) + bytes(symbols)
    return table, {s: (i, 5) for i, s in enumerate(symbols)}


def encode_jpeg_lossless(arr: np.ndarray, precision: int) -> bytes:
    """Encode a 2-D unsigned array as a JPEG Lossless, first-order prediction (SV1) codestream (T.81 Annex H)."""
    rows, cols = arr.shape
    a = arr.astype(np.int64)
    pred = np.empty_like(a)
    pred[0, 0] = 1 << (precision - 1)  # H.1.2.1: first sample of the first line
    pred[0, 1:] = a[0, :-1]  # first line: Ra
    pred[1:, 0] = a[:-1, 0]  # first column: Rb
    pred[1:, 1:] = a[1:, :-1]  # SV1: Ra
    diff = a - pred
    table, codes = _huffman_code(list(range(17)))
    out_bits: list[str] = []
    for d in diff.ravel().tolist():
        ssss = int(abs(d)).bit_length()
        code, length = codes[ssss]
        out_bits.append(format(code, f"0{length}b"))
        if 0 < ssss < 16:
            extra = d if d > 0 else d + (1 << ssss) - 1  # F.1.2.1: negative → low bits of (d - 1)
            out_bits.append(format(extra, f"0{ssss}b"))
    bitstr = "".join(out_bits)
    bitstr += "1" * (-len(bitstr) % 8)  # pad with 1-bits (F.1.2.3)
    data = bytearray()
    for i in range(0, len(bitstr), 8):
        byte = int(bitstr[i : i + 8], 2)
        data.append(byte)
        if byte == 0xFF:
            data.append(0x00)  # byte stuffing
    sof = struct.pack(">HHBHHBBBB", 0xFFC3, 11, precision, rows, cols, 1, 1, 0x11, 0)
    dht = struct.pack(">HHB", 0xFFC4, 2 + 1 + len(table), 0x00) + table
    sos = struct.pack(">HHBBBBBB", 0xFFDA, 8, 1, 1, 0x00, 1, 0, 0)  # Ss = 1: predictor SV1, Pt = 0
    return b"\xff\xd8" + sof + dht + sos + bytes(data) + b"\xff\xd9"


def _base_dataset(modality: str = "DX", sop_class: str = DX_STORAGE) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.PatientID = "PHANTOM"
    ds.BodyPartExamined = "CHEST"
    return ds


def _window(a: float, b: float) -> tuple[float, float]:
    """Window (centre, width) whose LINEAR function (PS3.3 C.11.2.1.2.1) maps a*g + b onto g/255 exactly."""
    width = 255 * a + 1
    return b + 255 * a / 2 + 0.5, width


def image_dataset(gray: np.ndarray, variant: str, modality: str = "DX") -> Dataset:
    """``gray`` (uint8) as a DICOM dataset of the given variant (see VARIANTS)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {VARIANTS}")
    ds = _base_dataset(modality)
    g16 = gray.astype(np.uint16)
    if variant == "mono2":
        ds.set_pixel_data(gray, "MONOCHROME2", 8)
    elif variant == "mono1":
        ds.set_pixel_data(255 - gray, "MONOCHROME1", 8)
    elif variant == "rescale12":
        ds.set_pixel_data(g16 * 16, "MONOCHROME2", 12)
        ds.RescaleSlope, ds.RescaleIntercept = SLOPE, INTERCEPT
        ds.WindowCenter, ds.WindowWidth = _window(16 * SLOPE, INTERCEPT)
    elif variant == "window16":
        stored = g16 * WINDOW_A + WINDOW_B
        stored[gray == 0] = 1000  # far below the window: must come out black
        stored[gray == 255] = 60000  # far above: white
        ds.set_pixel_data(stored, "MONOCHROME2", 16)
        ds.WindowCenter, ds.WindowWidth = _window(WINDOW_A, WINDOW_B)
    elif variant == "voilut12":
        ds.set_pixel_data(g16 * 16, "MONOCHROME2", 12)
        item = Dataset()
        # LUTDescriptor and LUTData have ambiguous VRs (US/SS, US/OW): name them, or pydicom cannot write them.
        item.add_new("LUTDescriptor", "US", [4096, 0, 8])
        item.add_new("LUTData", "US", np.minimum(np.arange(4096) // 16, 255).tolist())
        ds.VOILUTSequence = [item]
        ds.WindowCenter, ds.WindowWidth = 100.0, 50.0  # decoy: PS3.3 lets both exist; the LUT is applied
    else:
        ds.set_pixel_data(g16 * 16, "MONOCHROME2", 12)
        if variant == "rle":
            ds.compress(RLELossless)
        elif variant == "j2k":
            ds.compress(JPEG2000Lossless)
        else:
            _set_encapsulated(ds, encode_jpeg_lossless(g16 * 16, precision=12), JPEGLosslessSV1)
    return ds


def _set_encapsulated(ds: Dataset, frame: bytes, transfer_syntax: str) -> None:
    """Replace native pixel data with one encapsulated frame (as pydicom's own compress() does)."""
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].is_undefined_length = True  # PS3.5 A.4
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = transfer_syntax


def write_dicom(path: Path, gray: np.ndarray, variant: str = "mono2", modality: str = "DX") -> Path:
    """Write ``gray`` as a DICOM file of the given variant; return the path."""
    image_dataset(gray, variant, modality).save_as(path, enforce_file_format=True)
    return path


def write_dataset(path: Path, ds: Dataset) -> Path:
    """Write an arbitrary dataset (e.g. a report without pixel data) as a DICOM file."""
    ds.save_as(path, enforce_file_format=True)
    return path


def report_dataset() -> Dataset:
    """A structured-report-like dataset: a valid DICOM file with no pixel data."""
    ds = _base_dataset("SR", BASIC_TEXT_SR)
    ds.ContentDate = "20240101"
    ds.CompletionFlag = "COMPLETE"
    return ds
