"""What the benchmark sections share: percentiles, ports, processes, the machine."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

from benchmarks.pyodide_edge import summarize
from cli.procs import free_port, perch_process, start_perch, wait_http

__all__ = [
    "ROOT",
    "Stopwatch",
    "cpu_seconds",
    "free_port",
    "load_average",
    "machine",
    "perch_process",
    "start_perch",
    "summarize",
    "wait_http",
]

ROOT = Path(__file__).resolve().parent.parent


def load_average() -> str:
    """The 1-minute load average: other work on this machine shows up in the tails."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "?"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux), 0.0 where unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def _machine_busy_s() -> float:
    """CPU seconds all processes of the machine have used since boot (Linux), 0.0 where unknown."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def _own_cpu_s() -> float:
    """CPU seconds of this process and of the children it has waited for."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class Stopwatch:
    """Wall time of a section, and the CPU that other work on the machine took meanwhile."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.busy = _machine_busy_s()
        self.own = _own_cpu_s()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def others_cores(self) -> float:
        """Average number of cores other processes kept busy (benchmarks run on what is left)."""
        others = (_machine_busy_s() - self.busy) - (_own_cpu_s() - self.own)
        return max(0.0, others) / max(self.seconds, 1e-9)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _memory_gib() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 2**20:.0f} GiB"
    except OSError:
        pass
    return "?"


def _version(command: list[str]) -> str | None:
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0] if lines else None  # `git status --porcelain` says nothing on a clean tree


def _package(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    return {
        "os": f"{platform.system()} {platform.release()}",
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory": _memory_gib(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "commit": _version(["git", "-C", str(ROOT), "rev-parse", "--short=10", "HEAD"]),
        "dirty": bool(_version(["git", "-C", str(ROOT), "status", "--porcelain"])),
        "packages": {
            name: _package(name)
            for name in (
                "msgpack",
                "numpy",
                "sqlalchemy",
                "psycopg",
                "starlette",
                "uvicorn",
                "pytest-benchmark",
                "mabwiser",
                "vowpalwabbit",
            )
        },
        "postgresql": None,  # filled in by the ingestion section when it reaches the server
    }
