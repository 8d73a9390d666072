"""Every script in launch/ and shards/ answers the usual mistakes with one line on stderr and exit status 2,
before anything is created or submitted; dry runs work without Slurm; ``--help`` shows the defaults.

The scripts run as a user runs them (subprocesses), all cases at once on a few threads to keep the suite fast.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cxrdist.config import compose
from cxrdist.run.prepare import prepare_run
from testkit.tiny import TINY_RUN

REPO = Path(__file__).resolve().parents[2]
TINY = ["method=chexnet", *TINY_RUN]
NO_NETWORK = {
    "https_proxy": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "http_proxy": "http://127.0.0.1:9",
}


@dataclass
class Case:
    """One command: its arguments, what stderr must say (exit 2), and paths that must not appear."""

    script: str
    args: list[str]
    says: list[str]
    absent: list[Path] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    exit: int = 2
    stdout: list[str] = field(default_factory=list)


def _cases(tmp: Path, shards: Path, phantom: Path, run: Path) -> dict[str, Case]:
    """The cases, by name; ``tmp`` holds empty/, plain/ (a non-run folder) and nih/images/ (no CSVs)."""
    no_slurm = {"PATH": os.path.dirname(sys.executable)}  # no srun/sbatch, even where Slurm is installed
    data = f"data.root={shards}"
    c = {
        # launch/local.py
        "local typo key": Case("launch/local.py", [*TINY, "engine.max_bach_per_rank=8", data, f"run_dir={tmp}/l1"],
                               ["unknown config key engine.max_bach_per_rank; did you mean engine.max_batch_per_rank?"],
                               [tmp / "l1"]),
        "local unknown method": Case("launch/local.py", ["method=chexnte", data, f"run_dir={tmp}/l2"],
                                     ["unknown method option 'chexnte'; did you mean chexnet?"], [tmp / "l2"]),
        "local missing data.root": Case("launch/local.py", [*TINY, f"data.root={tmp}/none", f"run_dir={tmp}/l3"],
                                        [f"data.root={tmp}/none: no such folder"], [tmp / "l3"]),
        "local empty data.root": Case("launch/local.py", [*TINY, f"data.root={tmp}/empty", f"run_dir={tmp}/l4"],
                                      [f"data.root={tmp}/empty is empty"], [tmp / "l4"]),
        "local unset data.root": Case("launch/local.py", [*TINY, "data.root=", f"run_dir={tmp}/l4b"],
                                      ["data.root is empty; set data.root="], [tmp / "l4b"]),
        "local --nprocs": Case("launch/local.py", ["--nprocs", "2", *TINY, data, f"run_dir={tmp}/l5"],
                               ["unknown flag --nprocs; did you mean --nproc?"], [tmp / "l5"]),
        "local --nproc 0": Case("launch/local.py", ["--nproc", "0", *TINY, data, f"run_dir={tmp}/l6"],
                                ["--nproc must be ≥ 1, got 0"], [tmp / "l6"]),
        "local other config": Case("launch/local.py",
                                   [*TINY, "method.stages.train.optim.lr=0.5", data, f"run_dir={run}"],
                                   [f"{run} was started with another config",
                                    "method.stages.train.optim.lr: 0.001 → 0.5", "use a new run_dir, or --force"],
                                   [run / "stages", run / "logs"]),
        "local weights offline": Case("launch/local.py", [*TINY, "method.model.pretrained=true", "logger=wandb", data,
                                                          f"run_dir={tmp}/l8"],
                                      ["ImageNet weights for densenet121", "could not be loaded", "pretrained=false"],
                                      [tmp / "l8"], env={"TORCH_HOME": str(tmp / "torch"), **NO_NETWORK}),
        # launch/submit.py
        "submit dry run without Slurm": Case("launch/submit.py", ["--nodes", "4", "--gpus-per-node", "8", "--dry-run",
                                                                  "--run-dir", f"{tmp}/s1", "method=ma"], [],
                                             [tmp / "s1"], env=no_slurm, exit=0,
                                             stdout=["#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=8",
                                                     "#SBATCH --gpus-per-node=8", "name: ma", "# note: not checked"]),
        "submit without Slurm": Case("launch/submit.py", ["--run-dir", f"{tmp}/s2", *TINY, data],
                                     ["--cluster slurm: sbatch not found on PATH"], [tmp / "s2"], env=no_slurm),
        "submit --timeout-min 0": Case("launch/submit.py",
                                       ["--timeout-min", "0", "--dry-run", "--run-dir", f"{tmp}/s3"],
                                       ["--timeout-min must be ≥ 1, got 0"], [tmp / "s3"]),
        "submit typo key": Case("launch/submit.py", ["--cluster", "local", "--run-dir", f"{tmp}/s4", *TINY, data,
                                                     "method.stages.train.epoch=2"],
                                ["did you mean method.stages.train.epochs?"], [tmp / "s4"]),
        "submit missing data.root": Case("launch/submit.py", ["--cluster", "local", "--run-dir", f"{tmp}/s5", *TINY,
                                                              f"data.root={tmp}/none"],
                                         [f"data.root={tmp}/none: no such folder"], [tmp / "s5"]),
        # launch/evaluate.py
        "evaluate missing run dir": Case("launch/evaluate.py", [f"{tmp}/none"], [f"{tmp}/none: no such run dir"]),
        "evaluate not a run dir": Case("launch/evaluate.py", [f"{tmp}/plain"],
                                       ["not a cxrdist run dir (no config.yaml)"]),
        "evaluate unknown split": Case("launch/evaluate.py", [str(run), "--split", "tset"],
                                       ["unknown split(s) tset; choose from train, val, test, bbox"],
                                       [run / "eval", run / "wandb", run / "logs"]),
        "evaluate unknown stage": Case("launch/evaluate.py", [str(run), "--stage", "trian"],
                                       ["--stage trian: method chexnet has no such stage (its stages: train, eval)"],
                                       [run / "eval", run / "wandb"]),
        "evaluate unfinished run": Case("launch/evaluate.py", [str(run)], ["best.pt does not exist"],
                                        [run / "eval", run / "wandb"]),
        "evaluate --nproc 0": Case("launch/evaluate.py", [str(run), "--nproc", "0"], ["--nproc must be ≥ 1, got 0"]),
        "evaluate bad --name": Case("launch/evaluate.py", [str(run), "--shards", str(shards), "--name", "a/b"],
                                    ["--name 'a/b': use 1-100 letters, digits"], [run / "eval", run / "wandb"]),
        # launch/report.py
        "report not a run dir": Case("launch/report.py", [f"{tmp}/plain", "--out", f"{tmp}/r1"],
                                     ["not a cxrdist run dir"], [tmp / "r1"]),
        "report without results": Case("launch/report.py", [str(run)], ["no test metrics.json"], [run / "report"]),
        # launch/write_shards.py --array (the array job)
        "shard --array 0": Case("launch/write_shards.py",
                                ["--nih-root", str(phantom), "--out", f"{tmp}/h1", "--array", "0"],
                                ["--array must be ≥ 1, got 0"], [tmp / "h1"]),
        "shard missing root": Case("launch/write_shards.py",
                                   ["--nih-root", f"{tmp}/none", "--out", f"{tmp}/h2", "--array", "2"],
                                   [f"--nih-root {tmp}/none: no such folder"], [tmp / "h2"]),
        # launch/write_shards.py (here), verify_shards.py, make_phantom.py
        "write missing root": Case("launch/write_shards.py", ["--nih-root", f"{tmp}/none", "--out", f"{tmp}/w1"],
                                   ["no such folder"], [tmp / "w1"]),
        "write root without CSV": Case("launch/write_shards.py", ["--nih-root", f"{tmp}/nih", "--out", f"{tmp}/w2"],
                                       ["missing Data_Entry_2017_v2020.csv"], [tmp / "w2"]),
        "write out of another config": Case("launch/write_shards.py", ["--nih-root", str(phantom), "--out", str(shards),
                                                                "--size", "32", "--samples-per-shard", "40"],
                                            ["holds shards from a different writer config", "use a new --out"]),
        "write --workers 0": Case("launch/write_shards.py",
                                  ["--nih-root", str(phantom), "--out", f"{tmp}/w3", "--workers", "0"],
                                  ["--workers must be ≥ 1, got 0"], [tmp / "w3"]),
        # launch/write_shards.py --dataset chexpert|mimic|padchest (external sets)
        "write bad --dataset": Case("launch/write_shards.py", ["--dataset", "chexpret", "--root", str(tmp), "--out",
                                                               f"{tmp}/x1"],
                                    ["argument --dataset: invalid choice: 'chexpret'"], [tmp / "x1"]),
        "write bad --uncertain": Case("launch/write_shards.py", ["--dataset", "chexpert", "--root", str(tmp),
                                                                 "--uncertain", "half", "--out", f"{tmp}/x2"],
                                      ["argument --uncertain: invalid choice: 'half'"], [tmp / "x2"]),
        "write --min-age not padchest": Case("launch/write_shards.py", ["--dataset", "mimic", "--root", str(tmp),
                                                                        "--min-age", "5", "--out", f"{tmp}/x3"],
                                             ["--min-age is for --dataset padchest", "not mimic"], [tmp / "x3"]),
        "write --min-age -1": Case("launch/write_shards.py", ["--dataset", "padchest", "--root", str(tmp),
                                                              "--min-age", "-1", "--out", f"{tmp}/x4"],
                                   ["--min-age must be ≥ 0 (0 keeps pediatric images), got -1"], [tmp / "x4"]),
        "write external without --root": Case("launch/write_shards.py", ["--dataset", "padchest", "--out",
                                                                         f"{tmp}/x5"],
                                              ["--root is required"], [tmp / "x5"]),
        "verify missing root": Case("launch/verify_shards.py", [f"{tmp}/none"], ["no such folder"]),
        "phantom bad settings": Case("launch/make_phantom.py", ["--out", f"{tmp}/p1", "--num-images", "0"],
                                     ["num_images=0 (must be >= 1)"], [tmp / "p1"]),
        "phantom non-empty out": Case("launch/make_phantom.py", ["--out", f"{tmp}/plain", "--num-images", "10"],
                                      ["not empty and not a phantom"]),
        "phantom bad metadata dir": Case("launch/make_phantom.py",
                                         ["--out", f"{tmp}/p2", "--metadata-dir", f"{tmp}/none"],
                                         [f"--metadata-dir {tmp}/none: no such folder"], [tmp / "p2"]),
        "phantom bad flag value": Case("launch/make_phantom.py", ["--out", f"{tmp}/p3", "--worker", "2x"],
                                     ["invalid int value: '2x' (see --help)"], [tmp / "p3"]),
    }  # fmt: skip
    scripts = ["launch/local.py", "launch/submit.py", "launch/evaluate.py", "launch/report.py",
               "launch/write_shards.py", "launch/verify_shards.py", "launch/make_phantom.py"]  # fmt: skip
    for script in scripts:
        # verify_shards.py has no option with a default
        shows = ["usage: verify_shards.py [-h] root"] if script == "launch/verify_shards.py" else ["(default:"]
        c[f"{script} --help"] = Case(script, ["--help"], [], exit=0, stdout=shows)
    return c


def _run(case: Case, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, **case.env}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("CXRDIST_NIH_METADATA", None)
    cmd = [sys.executable, str(REPO / case.script), *case.args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def outcomes(shard_root: Path, phantom_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("cli")
    for folder in ("empty", "plain", "nih/images"):
        (tmp / folder).mkdir(parents=True)
    (tmp / "plain" / "notes.txt").write_text("not a run\n")
    run = tmp / "run"
    prepare_run(compose([*TINY, f"data.root={shard_root}", f"run_dir={run}"]))  # a run dir, nothing trained
    cwd = tmp / "cwd"  # where the scripts run: nothing may appear here (runs/, slurm-*.out, ...)
    cwd.mkdir()
    cases = _cases(tmp, shard_root, phantom_root, run)
    before = {p: p.stat().st_mtime_ns for p in (run / "config.yaml", shard_root / "_dataset.json")}
    with ThreadPoolExecutor(max_workers=3) as pool:
        procs = dict(zip(cases, pool.map(lambda c: _run(c, cwd), cases.values())))
    after = {p: p.stat().st_mtime_ns for p in before}
    return {"cases": cases, "procs": procs, "untouched": before == after, "cwd": sorted(os.listdir(cwd))}


@pytest.mark.parametrize("name", list(_cases(*[Path("/unused")] * 4)))
def test_script_answers(outcomes: dict, name: str):
    case, proc = outcomes["cases"][name], outcomes["procs"][name]
    assert proc.returncode == case.exit, f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    if case.exit == 2:
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, f"want one line on stderr, got:\n{proc.stderr}"
        assert lines[0].startswith(Path(case.script).name + ": "), lines[0]
        for text in case.says:
            assert text in lines[0], lines[0]
    for text in case.stdout:
        assert text in proc.stdout, proc.stdout
    for path in case.absent:
        assert not path.exists(), f"{path} was created"


def test_nothing_was_touched(outcomes: dict):
    assert outcomes["untouched"], "a refused command rewrote config.yaml or _dataset.json"
    assert outcomes["cwd"] == [], f"files appeared in the working directory: {outcomes['cwd']}"
