"""benchmarks/gpu.py at tiny sizes on the CPU: it runs end to end and writes sane JSON."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from torch import nn

from tests.conftest import REPO


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", REPO / "benchmarks" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_run_writes_every_figure(bench, tmp_path, monkeypatch):
    compiled: list[str] = []
    monkeypatch.setattr(nn.Module, "compile", lambda self, **kw: compiled.append(type(self).__name__))
    threads = torch.get_num_threads()
    out = tmp_path / "gpu.json"
    try:
        bench.main(["--tiny", "--device", "cpu", "--compile", "on", "--steps", "1", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["tiny"] is True and result["peak_bf16_tflops"] is None
    assert "masks=sam" in result["overrides"] and "preset=cpu" in result["overrides"]
    rows = {(r["stage"], r["precision"], r["compile"]): r for r in result["train"]}
    expected = {(s, p, False) for s in ("stage1", "stage2_a", "stage2_b") for p in ("fp32", "bf16")}
    assert set(rows) == expected | {("stage1", "bf16", True), ("stage2_a", "bf16", True)}
    assert compiled == ["FusionNet", "Denoiser"]  # what the compiled rows compile
    for r in rows.values():
        assert (r["batch"], r["crop"]) == (2, 32)
        assert r["step_s"] > 0 and r["tflop_per_step"] > 0 and r["mfu"] is None
        assert r["tflops"] == pytest.approx(r["tflop_per_step"] / r["step_s"])
    flops = {key: r["tflop_per_step"] for key, r in rows.items()}
    for stage in ("stage1", "stage2_a", "stage2_b"):  # autocast changes dtypes, not the arithmetic
        assert flops[(stage, "bf16", False)] == flops[(stage, "fp32", False)]
    # phase b runs the UNet at 2 feature timesteps without grad plus the head: more than phase a's one pass
    assert flops[("stage2_b", "fp32", False)] > flops[("stage2_a", "fp32", False)]
    modes = {(r["mode"], r["precision"]): r for r in result["inference"]}
    assert set(modes) == {(m, p) for m in ("features", "refine", "sampler4") for p in ("fp32", "bf16")}
    assert all(r["s_per_pair"] > 0 and r["size"] == [48, 64] for r in modes.values())
    assert modes[("sampler4", "fp32")]["t0"] == 999 and modes[("sampler4", "fp32")]["n_steps"] == 4
    assert result["sam"]["s_per_image"] > 0 and result["sam"]["model"] == "tiny (tests)"


def test_peaks_by_device_name(bench, monkeypatch):
    cuda = torch.device("cuda")
    for name, peak in [("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H200", 989.0),
                       ("NVIDIA A100-SXM4-80GB", 312.0), ("Tesla V100-SXM2-32GB", None)]:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None, name=name: name)
        assert bench.peak_bf16_tflops(cuda) == peak, name
    assert bench.peak_bf16_tflops(torch.device("cpu")) is None
