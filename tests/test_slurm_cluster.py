"""The slurm executor against a real Slurm cluster of one node, started by the fixture: munged with a key of its own,
then slurmctld and slurmd on a configuration written into a temporary folder (root as SlurmUser, no cgroups, no
accounting, ports of their own), so the array goes through sbatch, srun and slurmd as on a cluster. Skipped, saying
why, where the Debian packages (slurm-wlm, munge) are missing or the daemons cannot start (not root, say)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from executor_runs import extracted, local_array, results

from lesionsignal.pipeline import slurm
from lesionsignal.pipeline.embeddings import PANEL_UNITS
from lesionsignal.pipeline.units import Shard

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "squeue", "sinfo", "scancel")
PARTITION = "lesionsignal"
START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Cluster:
    folder: Path
    config: Path
    partition: str
    start_seconds: float  # from starting slurmctld to the node reported idle


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _munge_key(path: Path) -> None:
    """A fresh key of the test cluster's own, so nothing depends on /etc/munge/munge.key being there."""
    path.parent.mkdir(mode=0o755, exist_ok=True)
    if shutil.which("mungekey"):
        subprocess.run(["mungekey", "--create", f"--keyfile={path}"], check=True, capture_output=True)
    else:  # older munge packages: the key is any 1 KiB of random bytes, readable by its owner only
        path.write_bytes(os.urandom(1024))
    path.chmod(0o600)


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024 * 9 // 10  # what slurmd finds, less a margin it accepts
    return 1024


def _config(folder: Path, socket_path: Path) -> str:
    host = socket.gethostname().split(".")[0]
    return "\n".join(
        [
            "ClusterName=lesionsignal-test",
            f"SlurmctldHost={host}",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={socket_path}",
            f"StateSaveLocation={folder / 'state'}",
            f"SlurmdSpoolDir={folder / 'spool'}",
            f"SlurmctldPidFile={folder / 'slurmctld.pid'}",
            f"SlurmdPidFile={folder / 'slurmd.pid'}",
            f"SlurmctldLogFile={folder / 'slurmctld.log'}",
            f"SlurmdLogFile={folder / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",  # no cgroups needed
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",  # so no sacct: the executor reads squeue
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "MpiDefault=none",
            "ReturnToService=2",
            f"NodeName={host} CPUs={os.cpu_count() or 1} RealMemory={_memory_mb()} State=UNKNOWN",
            f"PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=INFINITE State=UP",
            "",
        ]
    )


def _stop(pid_file: Path) -> None:
    """End one daemon this fixture started, by the pid it wrote; killed if it does not end within 10 s."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
        for _ in range(200):
            if _ended(pid):
                return
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _ended(pid: int) -> bool:
    """Gone, or a zombie (a daemon's parent is init, which in a container may reap it late)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _tail(path: Path, lines: int = 8) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path.name}: none)"


@pytest.fixture(scope="module")
def slurm_cluster() -> Iterator[Cluster]:
    missing = [name for name in (*DAEMONS, *CLIENTS) if shutil.which(name) is None]
    if missing:
        pytest.skip(f"no Slurm here ({', '.join(missing)} not found; Debian: apt-get install slurm-wlm munge)")
    if os.geteuid() != 0:
        pytest.skip("the one-node test cluster runs its daemons as root (SlurmUser=root); this is not root")
    # munged wants every folder above its socket open to all (0755), which pytest's own temporary folders are not
    folder = Path(tempfile.mkdtemp(prefix="lesionsignal-slurm-"))
    folder.chmod(0o755)
    for name in ("state", "spool"):
        (folder / name).mkdir()
    munge = folder / "munge"
    _munge_key(munge / "munge.key")
    socket_path = munge / "munge.socket"
    config = folder / "slurm.conf"
    config.write_text(_config(folder, socket_path))
    before = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(config)  # sbatch, squeue and the jobs' srun read it (sbatch exports it)
    pid_files = [folder / "slurmd.pid", folder / "slurmctld.pid", munge / "munged.pid"]
    try:
        daemon = [
            "munged",
            f"--socket={socket_path}",
            f"--key-file={munge / 'munge.key'}",
            f"--pid-file={munge / 'munged.pid'}",
            f"--log-file={munge / 'munged.log'}",
            f"--seed-file={munge / 'munged.seed'}",
        ]
        started = time.monotonic()
        for command in (daemon, ["slurmctld", "-f", str(config)], ["slurmd", "-f", str(config)]):
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                pytest.skip(f"{command[0]} did not start: {done.stderr.strip() or done.stdout.strip()}")
        state = ""
        while time.monotonic() - started < START_TIMEOUT_S and state != "idle":
            query = subprocess.run(["sinfo", "--noheader", "--format=%T"], capture_output=True, text=True)
            state = query.stdout.strip()
            time.sleep(0.1)
        if state != "idle":
            logs = "\n".join(_tail(folder / f"{name}.log") for name in ("slurmctld", "slurmd"))
            pytest.skip(f"the test cluster's node is {state or 'unknown'} after {START_TIMEOUT_S:.0f} s:\n{logs}")
        cluster = Cluster(folder, config, PARTITION, time.monotonic() - started)
        print(f"one-node Slurm cluster up in {cluster.start_seconds:.1f} s (munged, slurmctld, slurmd, node idle)")
        yield cluster
    finally:
        stopping = time.monotonic()
        subprocess.run(["scancel", "--user=root"], capture_output=True)  # this cluster's jobs only (SLURM_CONF)
        for pid_file in pid_files:
            _stop(pid_file)
        print(f"one-node Slurm cluster stopped in {time.monotonic() - stopping:.1f} s")
        if before is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = before
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow  # three array tasks through sbatch, each a process that loads the demo encoders
def test_an_array_through_sbatch_on_a_one_node_cluster_gives_the_local_bytes(
    slurm_cluster: Cluster, executor_run, request: pytest.FixtureRequest
) -> None:
    assert slurm_cluster.start_seconds < START_TIMEOUT_S
    executor_reference = request.getfixturevalue("executor_reference")  # after the cluster: a skip costs nothing
    block = local_array(tasks=3, cluster="slurm", partition=slurm_cluster.partition, memory="500M", poll_s=0.5)
    run = extracted(executor_run("slurm-", **block))  # the embeddings stage's array, then the lesions stage's
    found = results(run)
    assert found.keys() == executor_reference.keys()
    assert [k for k in found if found[k] != executor_reference[k]] == []
    attempts = [slurm.attempts(run, PANEL_UNITS, Shard(s, 3)) for s in range(3)]
    jobs = [a["job"] for (a,) in attempts]  # one attempt each, the tasks of one array job
    assert len({j.split("_")[0] for j in jobs}) == 1 and [j.split("_")[1] for j in jobs] == ["0", "1", "2"]
    script = next(slurm.task_folder(run, PANEL_UNITS).glob("*_submission.sh")).read_text()
    assert "#SBATCH --array=0-2%3" in script and f"#SBATCH --partition={slurm_cluster.partition}" in script
    assert "#SBATCH --signal=USR2@" in script and "#SBATCH --mem=500M" in script
