"""The repository is self-contained: the NIH metadata ships as package data, an install carries every file the
code reads, and nothing points outside the repository."""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

import cxrdist
from cxrdist.phantom.meta import (
    BBOX_LIST,
    DATA_ENTRY,
    ENV_METADATA,
    TEST_LIST,
    TRAIN_VAL_LIST,
    default_metadata_dir,
    load_metadata,
)

REPO = Path(__file__).resolve().parents[1]
PACKAGE = Path(cxrdist.__file__).resolve().parent
METADATA_FILES = [f"{n}.gz" for n in (DATA_ENTRY, BBOX_LIST, TRAIN_VAL_LIST, TEST_LIST)]


def test_packaged_metadata_is_found_without_the_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.delenv(ENV_METADATA, raising=False)
    monkeypatch.chdir(tmp_path)  # no folder of the project around the working directory either
    folder = default_metadata_dir()
    assert folder == PACKAGE / "phantom" / "nih_metadata"
    meta = load_metadata(folder)
    assert (len(meta.rows), sum(map(len, meta.boxes.values())), len(meta.train_val), len(meta.test)) == (
        112_120,
        984,
        86_524,
        25_596,
    )
    assert (folder / "PROVENANCE.md").read_text().count("https://nihcc.app.box.com/v/ChestXray-NIHCC") == 1


def test_the_variable_overrides_and_a_bad_one_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv(ENV_METADATA, str(tmp_path))
    assert default_metadata_dir() == tmp_path
    monkeypatch.setenv(ENV_METADATA, str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match=f"{ENV_METADATA}=.*nope.* is not a directory; unset it"):
        default_metadata_dir()


def _package_data_globs() -> list[str]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    return config["tool"]["setuptools"]["package-data"]["cxrdist"]


def test_package_data_globs_cover_every_file_the_code_reads():
    """Every non-Python file inside the package must match a package-data glob, or an install drops it."""
    globs = _package_data_globs()
    data = [p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*") if p.is_file()]
    data = [p for p in data if not p.endswith((".py", ".pyc")) and "__pycache__" not in p]
    assert {f"phantom/nih_metadata/{n}" for n in METADATA_FILES} <= set(data)
    assert any(p.startswith("conf/method/") for p in data)
    uncovered = [p for p in data if not any(fnmatch.fnmatch(p, g.replace("**/", "*")) for g in globs)]
    assert not uncovered, f"files an install would not ship (add them to [tool.setuptools.package-data]): {uncovered}"


def test_a_built_wheel_ships_the_metadata_and_configs(tmp_path: Path):
    """Build the wheel a non-editable ``pip install .`` installs, from a copy of the sources."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        (src / name).write_bytes((REPO / name).read_bytes())
    shutil.copytree(PACKAGE, src / "cxrdist", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path / "wheel"
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = out.glob("cxrdist-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in METADATA_FILES + ["PROVENANCE.md"]:
        assert f"cxrdist/phantom/nih_metadata/{name}" in names
    configs = {p.relative_to(REPO).as_posix() for p in (PACKAGE / "conf").rglob("*.yaml")}
    assert configs <= names


def test_nothing_in_the_repository_points_outside_it():
    """No tracked file reads from, or sends readers to, a folder beside the repository."""
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    # Spelled in pieces so this file does not match itself.
    needles = [
        "../" + "shared",
        "shared" + "/nih-metadata",
        "shared" + "/notes",
        "METHODS" + "-CHECK",
        "/work/" + "shared",
    ]
    hits = [
        f"{name}: {needle}"
        for name in files
        if (REPO / name).is_file() and not name.endswith((".gz", ".png"))
        for needle in needles
        if needle in (REPO / name).read_text(errors="replace")
    ]
    assert not hits, hits
