"""The one decision (``dispatch.route``), the settings that steer it, and life without Triton."""

import os
import subprocess
import sys

import pytest
import torch

import structprune_triton
from structprune_triton import FakeStructuredSparsity, Settings, config
from structprune_triton.dispatch import Route, route

from .helpers import DEVICE, KERNELS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python(code: str, **env) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "STRUCTPRUNE_BACKEND")}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=120
    )


def _route(x, mask, s, **kw):
    return route(x, (x.dtype, torch.promote_types(mask.dtype, x.dtype)), s, **kw)


@pytest.mark.skipif(not KERNELS, reason="no Triton kernels on this machine")
def test_kernels_really_run_in_this_suite():
    """Guard against a suite that silently tests only the torch path: the kernel route leaves its
    own autograd node, and its NaN-poisoned output is fully overwritten."""
    with structprune_triton.settings(backend="triton", poison_outputs=True):
        x = torch.randn(4, 3, device=DEVICE, requires_grad=True)
        y = FakeStructuredSparsity(torch.tensor([1, 0, 1, 1], dtype=torch.bool, device=DEVICE))(x)
    assert type(y.grad_fn).__name__ == "_KernelRowMaskBackward"
    assert not y.isnan().any()


def test_routes():
    """Every branch of the decision, on a CPU tensor."""
    x = torch.randn(4, 3)
    mask = torch.tensor([True, False, True, True])
    kernels = config.HAS_TRITON and config.INTERPRET
    assert _route(x, mask, Settings(), bits_ok=True) is (Route.KERNEL if kernels else Route.BITS)
    torch_only = Settings(backend="torch")
    assert _route(x, mask, torch_only, bits_ok=True) is Route.BITS
    assert _route(x, mask, torch_only) is Route.NATIVE  # no bit trick for this call
    assert _route(x, mask, Settings(backend="torch", exact_zeros=False), bits_ok=True) is Route.MULTIPLY
    # with autograd, small tensors take one native op, large ones the bit trick
    w = x.clone().requires_grad_()
    assert _route(w, mask, torch_only, bits_ok=True) is Route.NATIVE
    assert _route(w, mask, Settings(backend="torch", bits_min_numel_grad=0), bits_ok=True) is Route.BITS
    # a layout the kernel does not take, where the op needs a dense one
    sliced = torch.randn(4, 6)[:, ::2]
    assert _route(sliced, mask, Settings(), dense_only=True, bits_ok=True) is Route.BITS


def test_traced_and_transformed_calls_take_native_ops():
    """torch.jit.trace, forward AD and torch.func see plain torch ops (the kernels carry no tangent,
    batch rule or trace)."""
    mask = torch.tensor([True, False, True])
    seen = []

    def spy(x):
        seen.append(_route(x, mask, Settings(), bits_ok=True))
        return x

    torch.jit.trace(spy, torch.randn(3, 2), check_trace=False)
    with torch.autograd.forward_ad.dual_level():
        spy(torch.autograd.forward_ad.make_dual(torch.randn(3, 2), torch.randn(3, 2)))
    torch.func.vmap(spy)(torch.randn(5, 3, 2))
    torch.func.grad(lambda x: spy(x).sum())(torch.randn(3, 2))
    assert seen == [Route.NATIVE] * 4


def test_settings_validate_and_restore():
    with pytest.raises(ValueError, match="unknown"):
        Settings(backend="cuda")
    before = structprune_triton.current_settings()
    with pytest.raises(RuntimeError, match="boom"):
        with structprune_triton.use_backend("torch") as s:
            assert structprune_triton.current_settings() is s and s.backend == "torch"
            raise RuntimeError("boom")
    assert structprune_triton.current_settings() is before


def test_describe_backend_names_the_implementation():
    assert structprune_triton.describe_backend("cpu", Settings(backend="torch")) == "torch path (backend 'torch')"
    expected = "interpreter" if config.HAS_TRITON and config.INTERPRET else "torch path"
    assert expected in structprune_triton.describe_backend("cpu", Settings())


def test_env_var_sets_the_default_backend():
    r = python("import structprune_triton as s; print(s.current_settings().backend)", STRUCTPRUNE_BACKEND="torch")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "torch"


@pytest.mark.skipif(not config.HAS_TRITON, reason="needs Triton")
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
        "assert not s.config.HAS_TRITON\n"
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
