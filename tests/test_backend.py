"""Backend dispatch: which path runs, the STRUCTPRUNE_BACKEND switch, and life without Triton."""

import os
import subprocess
import sys

import pytest
import torch

import structprune_triton
from structprune_triton import FakeStructuredSparsity, _backend

from .helpers import DEVICE, KERNELS, UpstreamFSS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python(code: str, **env) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "STRUCTPRUNE_BACKEND")}
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not KERNELS, reason="no Triton kernels on this machine")
def test_kernels_really_run_in_this_suite(monkeypatch):
    """Guard against a suite that silently tests only the torch path."""
    from structprune_triton import launch

    calls = []
    real = launch.row_mask
    monkeypatch.setattr(launch, "row_mask", lambda *a, **k: calls.append(1) or real(*a, **k))
    structprune_triton.set_backend("triton")
    try:
        x = torch.randn(4, 3, device=DEVICE, requires_grad=True)
        FakeStructuredSparsity(torch.tensor([1, 0, 1, 1], dtype=torch.bool, device=DEVICE))(x).sum().backward()
    finally:
        structprune_triton.set_backend("auto")
    assert len(calls) == 2  # forward and backward


def test_set_backend_validates():
    with pytest.raises(ValueError, match="unknown"):
        structprune_triton.set_backend("cuda")
    assert structprune_triton.get_backend() == "auto"


def test_auto_mode_choice_on_cpu():
    x = torch.ones(3)
    assert _backend.use_triton(x) == (_backend.HAS_TRITON and _backend.INTERPRET)


def test_env_var_forces_torch_path():
    r = python("import structprune_triton as s; print(s.get_backend())", STRUCTPRUNE_BACKEND="torch")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "torch"


@pytest.mark.skipif(not _backend.HAS_TRITON, reason="needs Triton")
def test_forced_triton_on_cpu_without_interpreter_is_a_clear_error():
    code = (
        "import torch, structprune_triton as s\n"
        "s.FakeStructuredSparsity(torch.ones(2, dtype=torch.bool))(torch.ones(2, 2))\n"
    )
    r = python(code, STRUCTPRUNE_BACKEND="triton", CUDA_VISIBLE_DEVICES="")
    assert r.returncode != 0
    assert "TRITON_INTERPRET=1" in r.stderr


def test_works_without_triton_installed():
    code = (
        "import sys; sys.modules['triton'] = None\n"  # import triton -> ImportError
        "import torch, structprune_triton as s\n"
        "from torch.ao.pruning._experimental.pruner.parametrization import FakeStructuredSparsity as U\n"
        "assert not s._backend.HAS_TRITON\n"
        "m = torch.tensor([True, False, True]); x = torch.randn(3, 4, requires_grad=True)\n"
        "y = s.FakeStructuredSparsity(m)(x); y.sum().backward()\n"
        "assert torch.equal(y, U(m)(x)) and torch.equal(x.grad, m[:, None].float().expand(3, 4))\n"
        "out = torch.randn(2, 3); lin = torch.nn.Linear(4, 3); lin._bias = torch.nn.Parameter(torch.ones(3))\n"
        "s.BiasHook(s.FakeStructuredSparsity(m), True)(lin, None, out)\n"
        "assert lin._bias.tolist() == [1.0, 0.0, 1.0]\n"
        "print('ok')\n"
    )
    r = python(code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def test_upstream_reference_is_importable():
    assert issubclass(FakeStructuredSparsity, UpstreamFSS)
