"""Tests for tests/slurm/local-cluster.sh and slurm/train.sbatch against a real one-machine Slurm cluster.

The ``slurm``-marked tests bring up their own 2-node cluster in a temporary state dir on a free block of
ports (root needed; the first run installs the Debian packages), and tear it down at the end, checking that
no daemon survives. With ``CXRDIST_SLURM_UP=1`` they use the cluster already running at ``$SLURM_CONF``
(or ``$CXRDIST_SLURM_DIR``) and leave it running. The unmarked tests only check the scripts' syntax and usage.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CLUSTER_SH = REPO / "tests" / "slurm" / "local-cluster.sh"  # test infrastructure, not the user's
TRAIN_SBATCH = REPO / "slurm" / "train.sbatch"
NUM_NODES = 2
TWO_NODES = ["--nodes", str(NUM_NODES), "--ntasks-per-node", "1"]


# ------------------------------------------------------------------------------------------------------------
# fast checks (no cluster)
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("script", [CLUSTER_SH, TRAIN_SBATCH], ids=lambda p: p.name)
def test_script_syntax(script: Path) -> None:
    subprocess.run(["bash", "-n", str(script)], check=True)


@pytest.mark.parametrize(
    "args", [["bogus"], [], ["up", "--nodes", "abc"], ["up", "--bogus-flag"], ["down", "--state-dir"]]
)
def test_bad_usage_exits_2(args: list[str]) -> None:
    proc = subprocess.run(["bash", str(CLUSTER_SH), *args], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert "usage:" in proc.stderr


# ------------------------------------------------------------------------------------------------------------
# cluster fixture
# ------------------------------------------------------------------------------------------------------------


@dataclass
class Cluster:
    state_dir: Path
    slurm_conf: Path
    owned: bool  # brought up by this module (and so torn down by it)
    env: dict[str, str]  # environment for Slurm client commands


def _clean_env(slurm_conf: Path) -> dict[str, str]:
    # SLURM_* from an outer job (pytest itself running under Slurm) would make sbatch/srun act on that job.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["SLURM_CONF"] = str(slurm_conf)
    return env


def _free_port_base() -> int:
    """A base port whose block (base .. base+20+NUM_NODES) is free. 10000-19999: below Linux's ephemeral range
    (32768+, where a client socket could grab a daemon's port), below train.sbatch's MASTER_PORTs (20000+),
    and not local-cluster.sh's default block (16800) so a developer's cluster can stay up."""
    for _ in range(50):
        base = random.randrange(10000, 19900, 100)
        if base == 16800:
            continue
        try:
            for port in [base + 6, base + 17, base + 18, base + 19] + [base + 21 + i for i in range(NUM_NODES)]:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free port block found")


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # gone
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _cluster_processes(state_dir: Path) -> list[str]:
    """Live processes that belong to the cluster in state_dir: daemons name it on their command line or carry
    local-cluster.sh's owner tag in their environment (slurmstepd inherits it from slurmd)."""
    tag = f"_CXRDIST_SLURM_OWNER={state_dir}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        if (str(state_dir).encode() in cmdline or tag in environ.split(b"\0")) and not _is_zombie(int(proc.name)):
            args = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{proc.name}: {args}")
    return found


def _daemon_pids(state_dir: Path) -> dict[str, int]:
    pids = {}
    for pid_file in (state_dir / "run").glob("*.pid"):
        text = pid_file.read_text().strip()
        if text.isdigit():
            pids[pid_file.stem] = int(text)
    return pids


def _down_and_check(cluster: Cluster) -> None:
    pids = _daemon_pids(cluster.state_dir)
    proc = subprocess.run(
        ["bash", str(CLUSTER_SH), "down", "--state-dir", str(cluster.state_dir), "--drain-timeout", "10"],
        capture_output=True,
        text=True,
        timeout=180,
        env=cluster.env,
    )
    assert proc.returncode == 0, f"down failed:\n{proc.stdout}\n{proc.stderr}"
    alive = {name: pid for name, pid in pids.items() if not _is_zombie(pid)}
    assert not alive, f"daemons still running after down: {alive}\n{proc.stdout}\n{proc.stderr}"
    leftovers = _cluster_processes(cluster.state_dir)
    assert not leftovers, "processes of the cluster left after down:\n" + "\n".join(leftovers)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    if os.environ.get("CXRDIST_SLURM_UP") == "1":
        state_dir = Path(os.environ.get("CXRDIST_SLURM_DIR", "/tmp/cxrdist-slurm"))
        slurm_conf = Path(os.environ.get("SLURM_CONF", state_dir / "etc" / "slurm.conf"))
        c = Cluster(slurm_conf.parent.parent, slurm_conf, owned=False, env=_clean_env(slurm_conf))
        proc = subprocess.run(["sinfo", "-h"], capture_output=True, text=True, env=c.env, timeout=30)
        if proc.returncode != 0:
            pytest.fail(f"CXRDIST_SLURM_UP=1 but sinfo fails with SLURM_CONF={slurm_conf}: {proc.stderr}")
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("SLURM_CONF", str(slurm_conf))  # submitit runs sbatch/sacct with os.environ
            yield c
        return

    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("the local Slurm cluster needs Linux and root (or set CXRDIST_SLURM_UP=1)")
    if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        pytest.skip("Slurm is not installed and there is no apt-get to install it")
    # Short path in /tmp: unix socket paths under the state dir are limited to 108 bytes.
    state_dir = Path(tempfile.mkdtemp(prefix="cxslurm-", dir="/tmp"))
    slurm_conf = state_dir / "etc" / "slurm.conf"
    c = Cluster(state_dir, slurm_conf, owned=True, env=_clean_env(slurm_conf))
    c.env["CXRDIST_SLURM_PORT_BASE"] = str(_free_port_base())
    proc = subprocess.run(
        ["bash", str(CLUSTER_SH), "up", "--nodes", str(NUM_NODES), "--state-dir", str(state_dir)],
        capture_output=True,
        text=True,
        timeout=900,
        env=c.env,
    )
    if proc.returncode != 0:
        subprocess.run(["bash", str(CLUSTER_SH), "down", "--state-dir", str(state_dir)], env=c.env, timeout=180)
        pytest.fail(f"local-cluster.sh up failed:\n{proc.stdout}\n{proc.stderr}")
    assert f"export SLURM_CONF={slurm_conf}" in proc.stdout
    try:
        with pytest.MonkeyPatch.context() as mp:
            for key in [k for k in os.environ if k.startswith("SLURM_")]:
                mp.delenv(key)
            mp.setenv("SLURM_CONF", str(slurm_conf))
            yield c
    finally:
        _down_and_check(c)  # no-op if test_down_leaves_no_daemon already stopped it
        shutil.rmtree(state_dir, ignore_errors=True)


def _sbatch_wait(cluster: Cluster, args: list[str], timeout: float = 120, **env: str) -> str:
    """Submit a job, wait until it has left the queue, and return its id. (``sbatch --wait`` would do, but it
    polls with a growing back-off of up to 10 s, which made this file twice as slow.)"""
    proc = subprocess.run(
        ["sbatch", "--parsable", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**cluster.env, **env},
    )
    assert proc.returncode == 0, f"sbatch {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    job_id = proc.stdout.strip().split(";")[0]
    deadline = time.monotonic() + timeout
    while True:
        queued = subprocess.run(
            ["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, env=cluster.env, timeout=30
        )
        if queued.returncode == 0 and not queued.stdout.strip():
            return job_id
        if time.monotonic() > deadline:
            subprocess.run(["scancel", job_id], env=cluster.env, timeout=30)
            pytest.fail(f"job {job_id} still queued after {timeout}s: {queued.stdout.strip()}")
        time.sleep(0.3)


def _sacct_states(cluster: Cluster, job_id: str, timeout: float = 30) -> list[str]:
    """States of the job's allocation records (one per run when requeued); sacct lags slurmctld a little."""
    deadline = time.monotonic() + timeout
    while True:
        proc = subprocess.run(
            ["sacct", "-n", "-P", "-D", "-X", "-j", job_id, "-o", "State"],
            capture_output=True,
            text=True,
            env=cluster.env,
            timeout=30,
        )
        # "CANCELLED by 0" -> "CANCELLED"
        states = [line.split()[0] for line in proc.stdout.splitlines() if line.strip()] if proc.returncode == 0 else []
        if states and states[-1] not in ("PENDING", "RUNNING", "REQUEUED") or time.monotonic() > deadline:
            return states
        time.sleep(0.5)


# ------------------------------------------------------------------------------------------------------------
# cluster tests (file order matters: the down test runs last)
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.slurm
def test_sbatch_runs_on_both_nodes(cluster: Cluster, tmp_path: Path) -> None:
    out = tmp_path / "job.out"
    wrap = 'hostname; srun bash -c "echo task=\\$SLURM_PROCID node=\\$SLURMD_NODENAME"'
    job_id = _sbatch_wait(cluster, [*TWO_NODES, "-o", str(out), "--wrap", wrap])
    tasks = dict(re.findall(r"task=(\d+) node=(\S+)", out.read_text()))
    assert tasks == {"0": "n1", "1": "n2"}, out.read_text()
    assert _sacct_states(cluster, job_id) == ["COMPLETED"]


@pytest.mark.slurm
def test_submitit_two_nodes_returns_both_ranks(cluster: Cluster, tmp_path: Path) -> None:
    submitit = pytest.importorskip("submitit")

    # Defined inside the test so cloudpickle sends it by value: the job's python can't import this test module.
    def rank_and_node() -> tuple[int, str]:
        import os

        return int(os.environ["SLURM_PROCID"]), os.environ["SLURMD_NODENAME"]

    # Fresh folder per run: job ids restart at 1 in a new state dir, and a stale result file would be reused.
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="slurm")
    executor.update_parameters(slurm_partition="debug", nodes=NUM_NODES, tasks_per_node=1, timeout_min=5)
    job = executor.submit(rank_and_node)
    assert sorted(job.results()) == [(0, "n1"), (1, "n2")]
    # submitit reads states through sacct, so this also checks accounting; sacct may lag a few seconds.
    deadline = time.monotonic() + 30
    while job.state != "COMPLETED" and time.monotonic() < deadline:
        time.sleep(1)
    assert job.state == "COMPLETED"


@pytest.mark.slurm
def test_gloo_all_reduce_across_two_nodes(cluster: Cluster, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    script = tmp_path / "all_reduce.py"
    script.write_text(
        "import os, torch, torch.distributed as dist\n"
        "rank, world = int(os.environ['SLURM_PROCID']), int(os.environ['SLURM_NTASKS'])\n"
        "dist.init_process_group('gloo', init_method=f\"tcp://127.0.0.1:{os.environ['PORT']}\", rank=rank, "
        "world_size=world)\n"
        "t = torch.tensor([rank + 1.0]); dist.all_reduce(t)\n"
        "print(f\"rank={rank} node={os.environ['SLURMD_NODENAME']} sum={t.item():g}\", flush=True)\n"
        "dist.destroy_process_group()\n"
    )
    out = tmp_path / "job.out"
    # Emulated nodes share the host, so the loopback address reaches rank 0 from every "node".
    wrap = f"PORT=$((20000 + SLURM_JOB_ID % 20000)) srun {sys.executable} {script}"
    job_id = _sbatch_wait(cluster, [*TWO_NODES, "-o", str(out), "--wrap", wrap], GLOO_SOCKET_IFNAME="lo")
    assert _sacct_states(cluster, job_id) == ["COMPLETED"], out.read_text()
    lines = sorted(re.findall(r"rank=\d node=n\d sum=\S+", out.read_text()))
    assert lines == ["rank=0 node=n1 sum=3", "rank=1 node=n2 sum=3"], out.read_text()


@pytest.mark.slurm
def test_train_sbatch_template_runs_torchrun_on_both_nodes(cluster: Cluster, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    # Stand-in for cxrdist.run.torchrun: joins the torchrun world, all-reduces, echoes its overrides.
    stub_dir = tmp_path / "stub"
    stub_dir.mkdir()
    (stub_dir / "cxrdist_stub_train.py").write_text(
        "import os, sys, torch, torch.distributed as dist\n"
        "dist.init_process_group('gloo')\n"
        "t = torch.tensor([dist.get_rank() + 1.0]); dist.all_reduce(t)\n"
        "print(f\"rank={dist.get_rank()}/{dist.get_world_size()} node={os.environ['SLURMD_NODENAME']} "
        "sum={t.item():g} args={' '.join(sys.argv[1:])}\", flush=True)\n"
        "dist.destroy_process_group()\n"
    )
    # The local cluster has no GPUs and 2 CPUs per node: override the template's 8 GPUs / 32 CPUs per node.
    # No -o: the job's output must land in its run dir, nothing in the submission folder (--chdir).
    sbatch_args = ["--gpus-per-node=0", "--cpus-per-task=1", "--time=5", "--chdir", str(tmp_path)]
    overrides = ["method=chexnet", "trainer.max_steps=3"]
    # The checkout's cxrdist on the path too: the template asks cxrdist.dist for the rendezvous address and port.
    stub_path = os.pathsep.join([str(stub_dir), str(REPO)])
    stub_env = {"PYTHON": sys.executable, "TRAIN_MODULE": "cxrdist_stub_train", "PYTHONPATH": stub_path}
    job_id = _sbatch_wait(
        cluster, [*sbatch_args, str(TRAIN_SBATCH), *overrides], timeout=170, GLOO_SOCKET_IFNAME="lo", **stub_env
    )
    run_dir = "runs/cxrdist"  # the job name: a resubmission finds the same run dir
    out = tmp_path / run_dir / "logs" / f"sbatch-{job_id}.out"
    text = out.read_text() if out.is_file() else f"{out} missing"
    assert _sacct_states(cluster, job_id) == ["COMPLETED"], text
    ranks = re.findall(r"rank=(\d)/2 node=(n\d) sum=3 args=(.*)", text)
    assert sorted(r for r, _, _ in ranks) == ["0", "1"], text
    assert sorted(n for _, n, _ in ranks) == ["n1", "n2"], text
    assert {a for _, _, a in ranks} == {f"run_dir={run_dir} method=chexnet trainer.max_steps=3"}, text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs", "stub"]  # no slurm-*.out / %x-%j.out here


@pytest.mark.slurm
def test_scontrol_requeue_restarts_running_job(cluster: Cluster, tmp_path: Path) -> None:
    out = tmp_path / "job.out"
    wrap = 'echo "run restart=${SLURM_RESTART_COUNT:-0}"; sleep 300'
    sbatch = ["sbatch", "--parsable", *TWO_NODES, "-o", str(out), "--open-mode=append", "--wrap", wrap]
    proc = subprocess.run(sbatch, capture_output=True, text=True, env=cluster.env, timeout=30, check=True)
    job_id = proc.stdout.strip().split(";")[0]

    def wait_for_run(restart: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while f"run restart={restart}" not in (out.read_text() if out.exists() else ""):
            assert time.monotonic() < deadline, f"run {restart} of job {job_id} did not start"
            time.sleep(0.3)

    try:
        wait_for_run(0, 30)
        subprocess.run(["scontrol", "requeue", job_id], env=cluster.env, timeout=30, check=True)
        # Eligible again after cred_expire (10 s) and picked up by the next 5 s scheduling pass.
        wait_for_run(1, 60)
    finally:
        subprocess.run(["scancel", job_id], env=cluster.env, timeout=30)
    states = _sacct_states(cluster, job_id)
    assert states[0] == "REQUEUED" and states[-1] == "CANCELLED", states


@pytest.mark.slurm
def test_down_leaves_no_daemon(cluster: Cluster) -> None:
    if not cluster.owned:
        pytest.skip("CXRDIST_SLURM_UP=1: not tearing down a cluster this test did not start")
    assert set(_daemon_pids(cluster.state_dir)) == {"munged", "mariadbd", "slurmdbd", "slurmctld"} | {
        f"slurmd-n{i + 1}" for i in range(NUM_NODES)
    }
    _down_and_check(cluster)
    status = subprocess.run(
        ["bash", str(CLUSTER_SH), "status", "--state-dir", str(cluster.state_dir)],
        capture_output=True,
        text=True,
        env=cluster.env,
        timeout=30,
    )
    assert status.returncode == 3, status.stdout
