"""A throwaway one-node SLURM cluster for tests: munged, slurmctld and slurmd started as root.

Everything lives in one temporary folder (configs, state, spool, logs, pid files, the munge key and
socket), on free TCP ports of 127.0.0.1, so it neither needs nor touches a system-wide SLURM setup.
The node has one fake GPU (a ``gpu`` GRES whose device file is /dev/null): ``sbatch --gpus=1`` is
accepted and scheduled, but no real GPU is there, so the jobs must train with ``device: cpu``.

Usage::

    reason = unavailable_reason()          # None, or why this machine cannot run it
    with SlurmCluster(tempfile.mkdtemp()) as cluster:
        subprocess.run(["sbatch", ...], env=cluster.env)
        cluster.show_job(jobid)            # scontrol show job, as a dict
        cluster.completed_jobs()           # SLURM's own record of every finished job (jobcomp)

Daemons are stopped by the PIDs in their pid files, newest first (slurmd, slurmctld, munged),
also when the test failed; jobs still running are cancelled first. If the process that started
them dies before it can stop them (an xdist worker killed while its SIGINT teardown runs), a reaper
it started first does: see :func:`reap`.
"""
from __future__ import annotations

import os
import pwd
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
INSTALL_SCRIPT = REPO / ".ci" / "slurm.sh"
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo", "srun")
SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")


def find_tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for folder in SBIN:
        if os.access(Path(folder) / name, os.X_OK):
            return str(Path(folder) / name)
    return None


def _missing_tools() -> list[str]:
    return [name for name in DAEMONS + CLIENTS if find_tool(name) is None]


def unavailable_reason() -> str | None:
    """None if a cluster can be started here; otherwise why not, worded for a skip message that
    says how to install what is missing. Installs nothing: .ci/run does, through .ci/slurm.sh."""
    if not hasattr(os, "geteuid") or not Path("/proc").is_dir():
        return "the SLURM test cluster needs Linux"
    if os.geteuid() != 0:
        return ("the SLURM test cluster must be started as root (munged, slurmctld and slurmd run "
                "as root/munge); run the tests as root, e.g. in the CI container")
    missing = _missing_tools()
    if missing:
        return (f"SLURM is not installed (missing {', '.join(missing)}); "
                f"install it with `bash {INSTALL_SCRIPT.relative_to(INSTALL_SCRIPT.parents[1])}` as root "
                f"(apt-get install slurm-wlm munge)")
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return "there is no 'munge' user to run munged as (the Debian munge package creates it)"
    return None


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 now, chosen below the kernel's ephemeral range.

    A port merely found free can be taken before the daemon binds it. Ports the kernel hands out
    by itself (port 0, as the tests' HTTP server asks, and every outgoing connection) come from the
    ephemeral range only, so a port below it stays free unless a program asks for that very number;
    :meth:`SlurmCluster.start` still retries with new ports if a daemon finds its port taken.
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768  # Linux's default range starts here
    choose = random.Random()  # seeded from the system: another run picks other ports
    ports: list[int] = []
    while len(ports) < count:
        port = choose.randrange(max(1024, low // 2), max(1025, low))
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        if port not in ports:
            ports.append(port)
    return ports


def _mem_total_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 4096


def parse_key_values(line: str) -> dict[str, str]:
    """``scontrol show job -o`` / jobcomp lines: ``Key=value Key2=value with spaces ...`` -> dict."""
    pairs = re.findall(r"(?:^|\s)([A-Za-z][A-Za-z0-9_:/]*)=(.*?)(?=\s+[A-Za-z][A-Za-z0-9_:/]*=|\s*$)", line.strip())
    return dict(pairs)


class SlurmCluster:
    """One node (this host, at 127.0.0.1) with ``cpus`` CPUs, ``gpus`` fake GPUs and two partitions:
    ``cpu`` (the default) and ``gpu``. Memory is not enforced (no cgroups); the node announces
    ``memory_mb`` so that per-rule ``mem_mb`` requests fit (``config_overrides``: the node is taken
    to have what the config says, so it does not drain on a smaller machine)."""

    #: Device files standing in for GPUs: SLURM only needs one file per GPU (it sets
    #: CUDA_VISIBLE_DEVICES from their order); with no GPU here, the jobs train on the CPU.
    FAKE_GPU_FILES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/urandom")

    def __init__(self, root: str | os.PathLike, *, cpus: int | None = None, gpus: int = 1,
                 memory_mb: int = 64000, start_timeout: float = 60.0) -> None:
        if not 1 <= gpus <= len(self.FAKE_GPU_FILES):
            raise ValueError(f"gpus must be 1 to {len(self.FAKE_GPU_FILES)}")
        self.root = Path(root)
        self.gpus = gpus
        self.cpus = cpus or max(4, os.cpu_count() or 1)
        self.memory_mb = memory_mb
        self.start_timeout = start_timeout
        self.node = socket.gethostname().split(".")[0] or "localhost"
        self.conf = self.root / "slurm.conf"
        self.munge_dir = self.root / "munge"
        self.munge_socket = self.munge_dir / "munge.socket"
        self.jobcomp = self.root / "jobcomp.txt"
        self.pid_files = {"munged": self.munge_dir / "munged.pid", "slurmctld": self.root / "slurmctld.pid",
                          "slurmd": self.root / "slurmd.pid"}
        self.logs = {"munged": self.munge_dir / "munged.log", "slurmctld": self.root / "slurmctld.log",
                     "slurmd": self.root / "slurmd.log"}
        self._procs: dict[str, subprocess.Popen] = {}
        self._started: list[str] = []  # in start order; stopped in reverse
        self._reaper: subprocess.Popen | None = None
        self._reaper_pipe: int | None = None  # its write end: closed only by us, or by our death

    # -- environment ---------------------------------------------------------------------
    @property
    def env(self) -> dict[str, str]:
        """os.environ plus SLURM_CONF (clients find this cluster) and the sbin folders on PATH."""
        env = dict(os.environ)
        env["SLURM_CONF"] = str(self.conf)
        path = env.get("PATH", "").split(os.pathsep)
        env["PATH"] = os.pathsep.join([str(self.root / "bin"), *path, *[d for d in SBIN if d not in path]])
        for key in [k for k in env if k.startswith(("SBATCH_", "SRUN_", "SALLOC_"))]:
            del env[key]  # the caller's SLURM defaults must not leak into the test's submissions
        return env

    def command(self, *args: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
        """Run a SLURM client (scontrol, squeue, scancel, ...) against this cluster."""
        return subprocess.run([find_tool(args[0]) or args[0], *args[1:]], env=self.env, text=True,
                              capture_output=True, timeout=timeout, check=check)

    # -- configuration -------------------------------------------------------------------
    def write_config(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)  # munged (user munge) must reach its folder below
        for sub in ("state", "spool"):
            (self.root / sub).mkdir(exist_ok=True)
        munge = pwd.getpwnam("munge")
        self.munge_dir.mkdir(exist_ok=True)
        os.chmod(self.munge_dir, 0o755)  # munged: the socket folder must be reachable by all (key is 0600)
        key = self.munge_dir / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o600)
        for path in (self.munge_dir, key):
            os.chown(path, munge.pw_uid, munge.pw_gid)
        self.ctld_port, slurmd_port = free_ports(2)
        r = self.root
        self.conf.write_text(f"""\
# Written by tests/slurm_cluster.py: one node, no accounting, no cgroups.
ClusterName=alexnet-test
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={self.ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={self.pid_files['slurmctld']}
SlurmdPidFile={self.pid_files['slurmd']}
SlurmctldLogFile={self.logs['slurmctld']}
SlurmdLogFile={self.logs['slurmd']}
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
MailProg=/bin/true
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
SlurmdParameters=config_overrides
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={self.jobcomp}
MinJobAge=600
KillWait=10
ReturnToService=2
SchedulerType=sched/backfill
GresTypes=gpu
PlugStackConfig={r}/plugstack.conf
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} Gres=gpu:{self.gpus} State=UNKNOWN
PartitionName=cpu Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes={self.node} Default=NO MaxTime=INFINITE State=UP
""")
        # The executor plugin's job step calls srun with SLURM_CONF removed (it keeps only the job's
        # identity among the SLURM_* variables); on a real cluster srun then reads
        # /etc/slurm/slurm.conf. This cluster's config is here instead, so the jobs get an srun
        # (first on the PATH that sbatch --export=ALL passes on) that points at it.
        bin_dir = r / "bin"
        bin_dir.mkdir(exist_ok=True)
        shim = bin_dir / "srun"
        shim.write_text(f"#!/bin/sh\nSLURM_CONF='{self.conf}' exec '{find_tool('srun')}' \"$@\"\n")
        os.chmod(shim, 0o755)
        (r / "gres.conf").write_text("".join(f"NodeName={self.node} Name=gpu File={path}\n"
                                             for path in self.FAKE_GPU_FILES[:self.gpus]))
        (r / "plugstack.conf").write_text("")  # not the system's /etc/slurm/plugstack.conf

    # -- daemons -------------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str], **kwargs) -> None:
        out = open(self.root / f"{name}.out", "ab")
        kwargs.setdefault("env", self.env)
        self._procs[name] = subprocess.Popen([find_tool(name), *args], stdout=out, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, start_new_session=True, **kwargs)
        out.close()
        self._started.append(name)

    def _wait(self, what: str, ok, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout or self.start_timeout)
        while time.monotonic() < deadline:
            for name, proc in self._procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode} while waiting for {what}\n"
                                       f"{self.log_tail(name)}")
            if ok():
                return
            time.sleep(0.2)
        raise RuntimeError(f"timed out waiting for {what}\n" + "\n".join(self.log_tail(n) for n in self._started))

    def start(self, attempts: int = 3) -> SlurmCluster:
        """Start the daemons; if one finds its port taken (another program bound it since it was
        chosen), stop them and start again on new ports."""
        for attempt in range(1, attempts + 1):
            try:
                return self._start()
            except RuntimeError as exc:
                if "Address already in use" not in str(exc) or attempt == attempts:
                    raise
                self.stop()
        raise AssertionError("unreachable")

    def _start(self) -> SlurmCluster:
        self._procs.clear()  # a failed attempt's daemons are stopped
        self.munge_socket.unlink(missing_ok=True)  # and a socket one left must not count as munged's
        self.write_config()
        munge = pwd.getpwnam("munge")
        self._spawn("munged", ["--foreground", f"--socket={self.munge_socket}",
                               f"--key-file={self.munge_dir / 'munge.key'}", f"--pid-file={self.pid_files['munged']}",
                               f"--log-file={self.logs['munged']}", f"--seed-file={self.munge_dir / 'munged.seed'}"],
                    user=munge.pw_uid, group=munge.pw_gid, extra_groups=[], cwd=self.munge_dir)
        self._wait("munged's socket", self.munge_socket.exists)
        self._spawn("slurmctld", ["-D", "-c", "-f", str(self.conf)])
        self._wait("slurmctld", lambda: self.command("scontrol", "ping", check=False).returncode == 0)
        self._spawn("slurmd", ["-D", "-f", str(self.conf), "-N", self.node])
        self._wait(f"node {self.node} to be idle", lambda: self.node_state().startswith("IDLE"))
        return self

    def node_state(self) -> str:
        out = self.command("scontrol", "show", "node", self.node, "-o", check=False).stdout
        return parse_key_values(out).get("State", "")

    def log_tail(self, name: str, chars: int = 3000) -> str:
        text = ""
        for path in (self.logs.get(name), self.root / f"{name}.out"):
            if path and path.exists():
                text += f"--- {path}\n" + path.read_text(errors="replace")[-chars:]
        return text

    def cancel_all_jobs(self, timeout: float = 30) -> None:
        """Cancel every job of this cluster and wait until none runs (their processes would outlive slurmd)."""
        if self.command("scontrol", "ping", check=False).returncode != 0:
            return
        user = pwd.getpwuid(os.getuid()).pw_name
        self.command("scancel", "--full", "--state=RUNNING", f"--user={user}", check=False)
        self.command("scancel", f"--user={user}", check=False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            active = self.command("squeue", "--noheader", "--states=PENDING,RUNNING,COMPLETING,CONFIGURING,SUSPENDED",
                                  "-o", "%i", check=False).stdout.split()
            if not active:
                return
            time.sleep(0.5)

    def _daemon_pids(self, name: str) -> list[int]:
        """The PID of ``name`` we started, and the one in its pid file if it is another process of
        this cluster (its command line names this cluster's folder), never an unrelated one."""
        proc = self._procs[name]
        pids = [proc.pid] if proc.poll() is None else []
        try:
            pid = int(self.pid_files[name].read_text().split()[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            return pids
        if pid not in pids and name in cmdline and str(self.root) in cmdline:
            pids.append(pid)
        return pids

    def stop(self) -> None:
        """Stop the daemons by PID, newest first (slurmd, slurmctld, munged); SIGKILL what stays."""
        try:
            self.cancel_all_jobs()
        except Exception:  # a broken cluster must still be stopped
            pass
        for name in reversed(self._started):
            pids = self._daemon_pids(name)
            for sig in (signal.SIGTERM, signal.SIGKILL):
                send(pids, sig)
                try:
                    self._procs[name].wait(timeout=15)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self._started.clear()

    def _start_reaper(self) -> None:
        """A process of its own session that waits on a pipe whose only writer is this process:
        if this process dies, however (SIGKILL included), the pipe ends without a word and the
        reaper stops the daemons; :meth:`_dismiss_reaper` tells it they are stopped."""
        read_end, self._reaper_pipe = os.pipe()
        self._reaper = subprocess.Popen([sys.executable, __file__, "--reap", str(self.root)], stdin=read_end,
                                        env=self.env, start_new_session=True)
        os.close(read_end)

    def _dismiss_reaper(self) -> None:
        if self._reaper_pipe is not None:
            os.write(self._reaper_pipe, STOPPED)
            os.close(self._reaper_pipe)
            self._reaper_pipe = None
            self._reaper.wait(timeout=60)

    def __enter__(self) -> SlurmCluster:
        self._start_reaper()  # before the first daemon
        try:
            return self.start()
        except BaseException:
            self.stop()
            self._dismiss_reaper()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
        self._dismiss_reaper()

    # -- what SLURM recorded -------------------------------------------------------------
    def show_job(self, jobid: str | int) -> dict[str, str]:
        """``scontrol show job`` as a dict (kept by slurmctld for MinJobAge after the job ends)."""
        out = self.command("scontrol", "show", "job", "-o", str(jobid)).stdout
        return parse_key_values(out.splitlines()[0])

    def completed_jobs(self) -> dict[str, dict[str, str]]:
        """SLURM's own permanent record of every finished job (jobcomp/filetxt), by job id."""
        if not self.jobcomp.exists():
            return {}
        records = (parse_key_values(line) for line in self.jobcomp.read_text().splitlines() if line.strip())
        return {rec["JobId"]: rec for rec in records if "JobId" in rec}


#: what a cluster writes to its reaper once it has stopped its daemons itself
STOPPED = b"stopped"


def processes_naming(root: str) -> list[int]:
    """Processes (but this one) whose command line names ``root``: the cluster's daemons."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid() or not running(int(entry.name)):
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(arg == root.encode() or root.encode() + b"/" in arg for arg in cmdline):
            pids.append(int(entry.name))
    return pids


def send(pids: list[int], sig: int) -> None:
    """``sig`` to each of ``pids`` that still exists."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, which waits for a parent to collect it, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def reap(root: str, grace: float = 15.0) -> int:
    """The reaper: block until the cluster's process closes our stdin. If it wrote :data:`STOPPED`
    first, nothing is left to do. Otherwise it died with its daemons running: cancel the cluster's
    jobs (their steps would outlive slurmd), SIGTERM every process that names ``root``, and SIGKILL
    those still there after ``grace`` seconds. Returns 0 if the owner had stopped them, else 1."""
    if sys.stdin.buffer.read() == STOPPED:
        return 0
    cluster = SlurmCluster(root)
    if cluster.conf.exists():  # else no daemon ever started (scontrol would wait for a controller)
        try:
            cluster.cancel_all_jobs()  # the owner's own way
        except Exception:  # a broken cluster must still be stopped
            pass
    pids = processes_naming(root)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        send(pids, sig)
        deadline = time.monotonic() + grace  # a grace for the daemons to exit, not a test's decision
        while time.monotonic() < deadline and any(running(pid) for pid in pids):
            time.sleep(0.2)
        pids = [pid for pid in pids if running(pid)]
        if not pids:
            break
    print(f"slurm_cluster reaper: the cluster in {root} lost its owner; stopped its daemons", file=sys.stderr)
    return 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["--reap"] and len(sys.argv) == 3:
        reap(sys.argv[2])
    else:
        sys.exit("usage: slurm_cluster.py --reap ROOT")
