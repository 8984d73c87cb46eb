"""Which device and rasterizer run: gsplat on CUDA where its kernels load, the torch rasterizer elsewhere,
and one line when a GPU machine falls back."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from protosaga_core import device
from protosaga_core.device import GsplatStatus, choose_backend, prefer_backend

CUDA = torch.device("cuda")
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def fresh_choice():
    """Each test starts from `auto` and with the fallback not yet announced."""
    device._say_fallback_once.cache_clear()
    yield
    prefer_backend("auto")
    device._say_fallback_once.cache_clear()


def with_gsplat(monkeypatch, usable: bool) -> None:
    detail = "kernels loaded" if usable else "gsplat ships no compiled kernels in this install"
    monkeypatch.setattr(device, "gsplat_status", lambda: GsplatStatus(usable, detail))


def test_the_cpu_always_gets_the_torch_rasterizer():
    assert choose_backend(CPU) == "torch"
    assert choose_backend(CPU, "torch") == "torch"
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        choose_backend(CPU, "gsplat")


def test_cuda_gets_gsplat_where_its_kernels_load(monkeypatch, capsys):
    with_gsplat(monkeypatch, usable=True)
    assert choose_backend(CUDA) == "gsplat"
    assert choose_backend(CUDA, "torch") == "torch"
    assert capsys.readouterr().err == ""


def test_cuda_without_gsplat_kernels_falls_back_once_with_the_fix(monkeypatch, capsys):
    with_gsplat(monkeypatch, usable=False)
    assert choose_backend(CUDA) == "torch"
    assert choose_backend(CUDA) == "torch"
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert "no compiled kernels" in lines[0] and "torch rasterizer on the GPU" in lines[0]
    assert "protosaga doctor --compile-gsplat" in lines[0] and "prebuilt wheels" in lines[0]


def test_asking_for_gsplat_where_it_cannot_run_is_an_error_naming_the_way_out(monkeypatch):
    with_gsplat(monkeypatch, usable=False)
    with pytest.raises(ValueError, match="no compiled kernels.*--backend torch"):
        choose_backend(CUDA, "gsplat")


def test_the_preferred_backend_is_what_auto_means(monkeypatch):
    with_gsplat(monkeypatch, usable=True)
    prefer_backend("torch")
    assert choose_backend(CUDA) == "torch"
    assert choose_backend(CUDA, "gsplat") == "gsplat"  # an explicit choice still wins
    prefer_backend("gsplat")
    with pytest.raises(ValueError, match="needs CUDA"):
        choose_backend(CPU)
    with pytest.raises(ValueError, match="must be one of auto, torch, gsplat"):
        prefer_backend("mps")


@pytest.mark.skipif(torch.cuda.is_available(), reason="hardware: checks a machine without a CUDA device")
def test_without_a_gpu_gsplat_never_starts_compiling():
    """gsplat compiles its kernels on import wherever nvcc exists, GPU or not (this machine has nvcc)."""
    code = (
        "import sys; from protosaga_core.device import gsplat_status; s = gsplat_status(); "
        "print(s.usable, s.detail, 'gsplat.cuda._backend' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False no CUDA device False"
