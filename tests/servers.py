"""Throwaway servers on loopback: a PostgreSQL cluster and an `mlflow server` on it.

The scale-out tests and benchmarks/scaleout_bench.py run the real engines a multi-machine study
uses, on one host: initdb in a temporary folder, free ports, everything removed afterwards.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# Durability off: a throwaway cluster trades crash safety for speed.
PG_OPTIONS = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"


class Unavailable(Exception):
    """PostgreSQL cannot run on this machine; the message says why in one line."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} unreadable)"


def stop_group(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM a process started with start_new_session, then SIGKILL what is left of its group."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def pg_bindir() -> Path | None:
    """The newest Debian PostgreSQL (/usr/lib/postgresql/<v>/bin), else initdb on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


@dataclass
class PgCluster:
    bindir: Path
    base: Path
    port: int
    runas: list[str]  # ["runuser", "-u", "postgres", "--"] as root, else []

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([*self.runas, *args], capture_output=True, text=True, check=check, timeout=60)

    def createdb(self, name: str) -> str:
        self.run(str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        return self.url(name)

    def url(self, db: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"


def _runas() -> tuple[list[str], object | None]:
    """initdb refuses root: as root the server runs as the postgres system user."""
    if os.geteuid() != 0:
        return [], None
    import pwd

    try:
        owner = pwd.getpwnam("postgres")
    except KeyError:
        raise Unavailable("running as root and there is no 'postgres' user to run the PostgreSQL server as") from None
    if not shutil.which("runuser"):
        raise Unavailable("running as root and runuser is missing; cannot start PostgreSQL as 'postgres'")
    return ["runuser", "-u", "postgres", "--"], owner


@contextlib.contextmanager
def postgres() -> Iterator[PgCluster]:
    """A PostgreSQL cluster on 127.0.0.1 and a free port; stopped and removed afterwards.

    Raises Unavailable before yielding when PostgreSQL is not installed or does not start.
    """
    bindir = pg_bindir()
    if bindir is None:
        raise Unavailable("PostgreSQL not installed (no initdb); run: sh scripts/install-system-deps.sh postgresql")
    runas, owner = _runas()
    base = Path(tempfile.mkdtemp(prefix="latentstudy-pg-"))
    if owner:
        os.chown(base, owner.pw_uid, owner.pw_gid)
    cluster = PgCluster(bindir, base, free_port(), runas)
    started = False
    try:
        init = cluster.run(str(bindir / "initdb"), "-D", str(base / "data"), "-U", "postgres", "-A", "trust",
                           "-E", "UTF8", "--locale=C", "--no-sync", check=False)
        if init.returncode != 0:
            raise Unavailable(f"initdb failed: {(init.stderr or init.stdout).strip().splitlines()[-1:]}")
        opts = f"-c listen_addresses=127.0.0.1 -c port={cluster.port} -c unix_socket_directories={base} {PG_OPTIONS}"
        start = cluster.run(str(bindir / "pg_ctl"), "-D", str(base / "data"), "-l", str(base / "server.log"),
                            "-w", "-t", "60", "-o", opts, "start", check=False)
        started = start.returncode == 0
        if not started:
            lines = tail(base / "server.log").splitlines() or start.stderr.strip().splitlines() or ["?"]
            why = next((ln for ln in lines if "FATAL" in ln or "ERROR" in ln), lines[-1])
            raise Unavailable(f"PostgreSQL did not start on 127.0.0.1:{cluster.port}: {why.strip()}")
        yield cluster
    finally:
        if started:
            cluster.run(str(bindir / "pg_ctl"), "-D", str(base / "data"), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class MlflowServer:
    uri: str
    artifacts: Path
    log: Path


@contextlib.contextmanager
def mlflow_server(backend: str, timeout: float = 120) -> Iterator[MlflowServer]:
    """`mlflow server` on the backend store URI, serving artifacts from a temporary folder.

    Raises RuntimeError, with the end of the server's log, when it exits or is not healthy in time.
    """
    base = Path(tempfile.mkdtemp(prefix="latentstudy-mlflow-"))
    port = free_port()
    log = base / "server.log"
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
           "--artifacts-destination", str(base / "artifacts"), "--serve-artifacts",
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=base, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {proc.returncode}:\n{tail(log)}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server not healthy after {timeout:g} s:\n{tail(log)}")
            time.sleep(0.3)
        yield MlflowServer(f"http://127.0.0.1:{port}", base / "artifacts", log)
    finally:
        stop_group(proc)
        shutil.rmtree(base, ignore_errors=True)
