"""CPU resources of one process: torch's intra-op threads and the allocator's reuse of large blocks.

Every entry point (train.py, evaluate.py, precompute_masks.py, benchmarks/*) calls :func:`configure` first.

Threads. torch starts one OpenMP thread per core it sees. When another process keeps one of those cores
busy, every parallel region waits for the thread that shares it, and small ops (the fusion metrics) get
~10× slower than with one thread. So a process uses the cores of its affinity mask (and cgroup quota) that
are idle right now (sampled from /proc/stat for 0.1 s), divided among the processes of this job on the node
(DDP ranks on CPU, one per GPU otherwise). Precedence: the ``threads`` config key, ``$SGDFUSE_THREADS``,
``$OMP_NUM_THREADS`` set by the user, then that rule. The result is logged and exported as
``OMP_NUM_THREADS``, which Lightning's DDP launcher and the ranks it starts read. DataLoader workers run
with one torch thread (torch sets that in every worker); OpenCV gets one thread per process, which forked
workers inherit.

Allocator. glibc returns every block above 32 MB to the kernel on ``free`` and maps fresh, zeroed pages on
the next ``malloc``, so each full-size activation (a 32-channel 640×480 map is 39 MB; a paper batch of
160² crops, 78 MB) costs page faults on first touch. Keeping such blocks in the heap halved the Stage-I
forward pass at 640×480 (benchmarks/stage1_cpu.py). The price: the process's resident memory stays at its
peak instead of shrinking between steps.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

THREADS_ENV = "SGDFUSE_THREADS"
#: A core counts as busy above this share of non-idle time during the sample.
BUSY_SHARE = 0.5
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
_KEEP_BLOCKS_UP_TO = 1 << 30  # bytes served from the heap (glibc's default mmap threshold is ≤ 32 MB)

_exported_threads: str | None = None  # OMP_NUM_THREADS as this process exported it (Hydra -m reruns)


@dataclass(frozen=True)
class ThreadPlan:
    threads: int
    reason: str


def allowed_cores() -> int:
    """Cores this process may run on: its affinity mask, capped by a cgroup-v2 CPU quota."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = Path("/sys/fs/cgroup/cpu.max")
    try:
        limit, period = quota.read_text().split()[:2]
        if limit != "max":
            cores = min(cores, max(1, math.ceil(int(limit) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


def busy_cores(sample_s: float = 0.1) -> int:
    """Cores of this process's affinity mask that other work kept busy during ``sample_s`` (0 if unknown)."""
    if sample_s <= 0 or not hasattr(os, "sched_getaffinity"):
        return 0
    cpus = os.sched_getaffinity(0)
    before = _cpu_times(cpus)
    time.sleep(sample_s)
    after = _cpu_times(cpus)
    busy = 0
    for cpu, (idle0, total0) in before.items():
        idle1, total1 = after.get(cpu, (idle0, total0))
        if total1 > total0 and 1 - (idle1 - idle0) / (total1 - total0) > BUSY_SHARE:
            busy += 1
    return busy


def _cpu_times(cpus: set[int]) -> dict[int, tuple[int, int]]:
    """cpu id -> (idle + iowait jiffies, all jiffies) from /proc/stat; empty where it is unreadable."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return {}
    times = {}
    for line in lines:
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            values = [int(v) for v in fields[:8]]
            times[int(name[3:])] = (values[3] + values[4], sum(values))
    return times


def local_processes(trainer: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Processes of this job on this node: torchrun's/SLURM's count, else the trainer config's
    (``devices`` ranks under a DDP strategy; GPUs with ``devices: -1``)."""
    env = os.environ if env is None else env
    for var in ("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE"):  # SLURM: "4" or "4(x2)"
        value = env.get(var, "").split("(")[0]
        if value.isdigit() and int(value) > 0:
            return int(value)
    if not trainer:
        return 1
    devices = trainer.get("devices", 1)
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        devices = int(devices)
    elif isinstance(devices, str) and "," in devices:  # "0,1": device ids
        devices = [d for d in devices.split(",") if d.strip()]
    if isinstance(devices, Sequence) and not isinstance(devices, str):
        return max(1, len(devices))
    if isinstance(devices, int) and devices > 0:
        return devices
    accelerator = str(trainer.get("accelerator", "auto"))
    if devices in (-1, "-1", "auto") and accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return max(1, torch.cuda.device_count())
    return 1


def plan_threads(requested: int | None = None, processes: int = 1, env: Mapping[str, str] | None = None,
                 sample_s: float = 0.1) -> ThreadPlan:
    """How many intra-op threads this process should use, and why (see the module docstring)."""
    env = os.environ if env is None else env
    if requested is not None:
        return ThreadPlan(_positive(requested, "threads"), f"threads={requested} (config)")
    if env.get(THREADS_ENV):
        value = env[THREADS_ENV]
        return ThreadPlan(_positive(value, f"${THREADS_ENV}"), f"${THREADS_ENV}={value}")
    omp = env.get("OMP_NUM_THREADS")
    if omp and omp != _exported_threads:
        return ThreadPlan(_positive(omp, "$OMP_NUM_THREADS"), f"$OMP_NUM_THREADS={omp}")
    cores, busy = allowed_cores(), busy_cores(sample_s)
    processes = max(1, processes)
    threads = max(1, max(1, cores - busy) // processes)
    return ThreadPlan(threads, f"{cores} allowed cores, {busy} busy, {processes} process(es) per node")


def _positive(value: Any, name: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1:
        raise ValueError(f"{name}={value!r}: the number of threads must be a positive integer")
    return number


def reuse_freed_memory() -> bool:
    """Keep freed blocks up to 1 GiB in glibc's heap (see the module docstring); False where not glibc."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, _KEEP_BLOCKS_UP_TO)
                and libc.mallopt(_M_TRIM_THRESHOLD, 2 * _KEEP_BLOCKS_UP_TO))


def configure(requested: int | None = None, processes: int = 1, sample_s: float = 0.1,
              keep_freed_memory: bool = True) -> ThreadPlan:
    """Set this process's threads and (with ``keep_freed_memory``) the allocator; returns (and logs) the
    thread plan."""
    global _exported_threads
    plan = plan_threads(requested, processes, sample_s=sample_s)
    torch.set_num_threads(plan.threads)
    _exported_threads = os.environ["OMP_NUM_THREADS"] = str(plan.threads)
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:  # pragma: no cover - OpenCV is a dependency
        pass
    kept = keep_freed_memory and reuse_freed_memory()
    allocator = "large blocks kept in the heap" if kept else "allocator unchanged"
    log.info("CPU: %d torch thread(s) per process (%s); %s", plan.threads, plan.reason, allocator)
    return plan


def configure_from_config(cfg: Mapping[str, Any]) -> ThreadPlan:
    """:func:`configure` from a composed config: ``threads`` and the ``trainer`` section (if any)."""
    trainer = cfg.get("trainer")
    return configure(cfg.get("threads"), local_processes(trainer))
