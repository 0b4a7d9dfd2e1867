"""The one decision (``dispatch.route``), the settings that steer it, and life without Triton."""

import os
import subprocess
import sys

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import structprune_triton
from structprune_triton import FakeStructuredSparsity, Settings, config, kernels_run_on, kernels_serve
from structprune_triton.dispatch import Impl, route

from .helpers import DEVICE, KERNELS, random_mask

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python(code: str, **env) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "STRUCTPRUNE_BACKEND")}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=120
    )


def _route(x, mask, s, **kw):
    return route(x, (x.dtype, torch.promote_types(mask.dtype, x.dtype)), s, **kw)


def fake_cuda(*shape):
    """A CUDA tensor without a GPU (fake tensors carry a device and a size, no data)."""
    with FakeTensorMode(allow_non_fake_inputs=True):
        return torch.empty(shape, device="cuda")


@pytest.mark.skipif(not KERNELS, reason="no Triton kernels on this machine")
def test_kernels_really_run_in_this_suite():
    """Guard against a suite that silently tests only the torch path: the kernel route leaves its
    own autograd node, and its NaN-poisoned output is fully overwritten."""
    with structprune_triton.settings(backend="triton", poison_outputs=True):
        x = torch.randn(4, 3, device=DEVICE, requires_grad=True)
        y = FakeStructuredSparsity(random_mask(4, density=0.5))(x)
    assert type(y.grad_fn).__name__ == "_KernelRowMaskBackward"
    assert not y.isnan().any()


def test_routes():
    """Every branch of the decision, on CPU tensors; the plan carries the settings it was made under."""
    x = torch.randn(4, 3)
    mask = random_mask(4, device="cpu")
    kernels = config.HAS_TRITON and config.INTERPRET
    s = Settings()
    plan = _route(x, mask, s)
    assert plan.impl is (Impl.KERNEL if kernels else Impl.TORCH)
    assert plan.settings is s and not plan.transform and not plan.compiled
    assert _route(x, mask, Settings(backend="torch")).impl is Impl.TORCH
    # dtypes the kernels do not take, and a layout the in-place kernel does not take
    assert _route(x.to(torch.int32), mask, Settings()).impl is Impl.TORCH
    sliced = torch.randn(4, 6)[:, ::2]
    assert _route(sliced, mask, Settings(), in_place=True).impl is Impl.TORCH
    assert _route(sliced, mask, Settings()).impl is plan.impl  # the row mask copies it


def test_impl_members_run_different_code():
    assert [i.name for i in Impl] == ["KERNEL", "OP", "TORCH"]


@pytest.mark.skipif(not config.HAS_TRITON, reason="needs Triton")
@pytest.mark.parametrize("compiled", [False, True])
def test_size_threshold_is_the_same_in_eager_and_compiled_mode(monkeypatch, compiled):
    """CUDA tensors below ``triton_min_numel`` take the torch formula, eager and compiled alike
    (only how the kernel runs differs); ``backend="triton"`` ignores the threshold."""
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: compiled)
    kernel = Impl.OP if compiled else Impl.KERNEL
    small, large = fake_cuda(8, 8), fake_cuda(64, 64)
    s = Settings(triton_min_numel=1000)
    f32 = (torch.float32, torch.float32)
    assert route(small, f32, s).impl is Impl.TORCH
    assert route(large, f32, s).impl is kernel
    assert route(small, f32, Settings(backend="triton", triton_min_numel=1000)).impl is kernel
    assert route(large, f32, Settings(backend="torch")).impl is Impl.TORCH
    assert route(large, f32, s).compiled is compiled


@pytest.mark.skipif(not config.HAS_TRITON, reason="needs Triton")
def test_one_rule_for_tensors_and_devices():
    s = Settings(triton_min_numel=1000)
    assert not kernels_serve(fake_cuda(8, 8), s) and kernels_serve(fake_cuda(64, 64), s)
    assert kernels_serve("cuda", s) and kernels_run_on(torch.device("cuda"), s)  # sizes aside
    assert not kernels_serve("cuda", Settings(backend="torch"))
    assert kernels_serve(torch.randn(2), s) is config.INTERPRET is kernels_run_on("cpu", s)
    assert not kernels_serve(torch.empty(2, device="meta"), s)


def test_traced_and_transformed_calls_take_the_torch_formula():
    """torch.jit.trace, forward AD and torch.func see plain torch ops (the kernels carry no tangent,
    batch rule or trace)."""
    mask = random_mask(3, device="cpu")
    seen = []

    def spy(x):
        seen.append(_route(x, mask, Settings()))
        return x

    torch.jit.trace(spy, torch.randn(3, 2), check_trace=False)
    with torch.autograd.forward_ad.dual_level():
        spy(torch.autograd.forward_ad.make_dual(torch.randn(3, 2), torch.randn(3, 2)))
    torch.func.vmap(spy)(torch.randn(5, 3, 2))
    torch.func.grad(lambda x: spy(x).sum())(torch.randn(3, 2))
    assert [(p.impl, p.transform) for p in seen] == [(Impl.TORCH, True)] * 4


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


@pytest.mark.skipif(not config.HAS_TRITON, reason="needs Triton")
@pytest.mark.parametrize(
    "value, on",
    [("false", False), ("off", False), ("no", False), ("0", False), ("", False), ("False", False)]
    + [("true", True), ("on", True), ("1", True)],
)
def test_triton_interpret_is_read_as_triton_reads_it(value, on):
    """Values Triton reads as off leave the interpreter off, so a CPU model prepares, trains and
    runs on the torch path (as upstream would) instead of failing; values it reads as on run the
    kernels under the interpreter."""
    code = (
        "import torch, structprune_triton as s\n"
        "from structprune_triton.pruner import SaliencyPruner\n"
        "model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))\n"
        "pruner = SaliencyPruner({'sparsity_level': 0.5})\n"
        "pruner.prepare(model, [{'tensor_fqn': '0.weight'}]); pruner.step()\n"
        "model(torch.randn(4, 6)).sum().backward()\n"
        "y = s.row_mask(torch.randn(4, 3, requires_grad=True), torch.tensor([True, False, True, True]))\n"
        "print(s.config.INTERPRET, type(y.grad_fn).__name__, s.describe_backend('cpu'))\n"
    )
    r = python(code, TRITON_INTERPRET=value, CUDA_VISIBLE_DEVICES="")
    assert r.returncode == 0, r.stderr
    if on:
        expected = "True _KernelRowMaskBackward Triton kernels under the interpreter (TRITON_INTERPRET=1)"
    else:
        expected = "False WhereBackward0 torch path (no Triton kernels on CPU without TRITON_INTERPRET=1)"
    assert r.stdout.strip() == expected
