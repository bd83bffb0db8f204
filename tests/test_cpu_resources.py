"""Threads per process (precedence, busy cores, processes per node), the allocator setting, loader workers."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from sgdfuse.orchestration import cpu
from tests.conftest import compose_train


@pytest.fixture
def machine(monkeypatch):
    """8 allowed cores, ``busy`` of them loaded by others (set by the test)."""
    state = {"busy": 0}
    monkeypatch.setattr(cpu, "allowed_cores", lambda: 8)
    monkeypatch.setattr(cpu, "busy_cores", lambda sample_s=0.1: state["busy"])
    return state


def test_precedence_config_then_env_then_omp_then_idle_cores(machine):
    env = {"SGDFUSE_THREADS": "3", "OMP_NUM_THREADS": "5"}
    assert cpu.plan_threads(2, env=env) == cpu.ThreadPlan(2, "threads=2 (config)")
    assert cpu.plan_threads(None, env=env).threads == 3
    assert cpu.plan_threads(None, env={"OMP_NUM_THREADS": "5"}).threads == 5
    plan = cpu.plan_threads(None, env={})
    assert plan.threads == 8 and "8 allowed cores, 0 busy, 1 process" in plan.reason


def test_idle_cores_are_shared_among_the_processes_of_the_node(machine):
    assert cpu.plan_threads(None, processes=2, env={}).threads == 4
    machine["busy"] = 3
    assert cpu.plan_threads(None, processes=2, env={}).threads == 2  # (8 - 3) // 2
    machine["busy"] = 8
    assert cpu.plan_threads(None, processes=4, env={}).threads == 1  # never zero


@pytest.mark.parametrize("bad", [0, -2, "two"])
def test_bad_thread_counts_name_the_setting(bad):
    with pytest.raises(ValueError, match="threads"):
        cpu.plan_threads(bad, env={})
    with pytest.raises(ValueError, match=r"\$SGDFUSE_THREADS"):
        cpu.plan_threads(None, env={"SGDFUSE_THREADS": str(bad)})


def test_processes_per_node_from_trainer_config_and_launcher_env():
    assert cpu.local_processes(compose_train(["trainer=ddp_cpu"]).trainer, env={}) == 2
    assert cpu.local_processes(compose_train(["trainer=cpu"]).trainer, env={}) == 1
    assert cpu.local_processes({"devices": [0, 1, 2]}, env={}) == 3
    assert cpu.local_processes({"devices": "0,1"}, env={}) == 2
    assert cpu.local_processes({"devices": 1}, env={"LOCAL_WORLD_SIZE": "4"}) == 4
    assert cpu.local_processes(None, env={"SLURM_NTASKS_PER_NODE": "8(x2)"}) == 8


def test_configure_sets_exports_and_logs(machine, monkeypatch, caplog):
    monkeypatch.delenv("SGDFUSE_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    machine["busy"] = 6
    before = torch.get_num_threads()
    try:
        with caplog.at_level(logging.INFO, logger=cpu.__name__):
            plan = cpu.configure(None, processes=1)
        assert plan.threads == 2 and torch.get_num_threads() == 2
        assert os.environ["OMP_NUM_THREADS"] == "2"  # read by Lightning's DDP launcher and its ranks
        assert "2 torch thread(s) per process (8 allowed cores, 6 busy" in caplog.text
        machine["busy"] = 0  # a later configure in this process (Hydra -m) is not bound by its own export
        assert cpu.configure(None, processes=2).threads == 4
    finally:
        torch.set_num_threads(before)


def test_a_core_kept_busy_by_another_process_is_seen():
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("needs Linux CPU affinity")
    core = max(os.sched_getaffinity(0))
    spinner = subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{core}}})\n"
                                "while True: pass"])
    try:
        time.sleep(0.3)
        assert cpu.busy_cores(0.3) >= 1
    finally:
        spinner.kill()
        spinner.wait()


def test_allocator_keeps_large_blocks_on_glibc():
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    assert cpu.reuse_freed_memory() is True


class _ThreadsSeen(Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> tuple[int, int]:
        import cv2

        return torch.get_num_threads(), cv2.getNumThreads()


def test_loader_workers_run_one_torch_and_one_opencv_thread(machine):
    before = torch.get_num_threads()
    try:
        cpu.configure(2)
        seen = list(DataLoader(_ThreadsSeen(), batch_size=None, num_workers=1,
                               multiprocessing_context="fork"))
    finally:
        torch.set_num_threads(before)
    assert [tuple(int(v) for v in s) for s in seen] == [(1, 1), (1, 1)]
