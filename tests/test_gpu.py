"""GPU-only behaviour: no host synchronisation, non-default streams, CUDA graph capture, peak memory.

Skipped without CUDA (these properties do not exist on the CPU); run by ``scripts/gpu-check``."""

import copy

import pytest
import torch
from torch import nn

import structprune_triton
from structprune_triton import BiasHook, FakeStructuredSparsity, prepare_module

from .helpers import ON_GPU, UpstreamBiasHook, UpstreamFSS, random_mask

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU")]


def mlp(param_cls=FakeStructuredSparsity, hook_cls=BiasHook, prune_bias=True):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 32)).cuda()
    g = torch.Generator().manual_seed(1)
    for m in (model[0], model[2]):
        mask = random_mask(m.weight.shape[0], generator=g)
        prepare_module(m, mask, prune_bias=prune_bias, parametrization=param_cls, hook=hook_cls)
    return model


def run_without_host_sync(step) -> None:
    """Run ``step`` with CUDA's sync debug mode raising on any host synchronisation."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()


@pytest.mark.parametrize("prune_bias", [True, False])
def test_no_host_sync_forward_backward(backend, prune_bias):
    model = mlp(prune_bias=prune_bias)
    x = torch.randn(16, 64, device="cuda")
    run_without_host_sync(lambda: model(x).sum().backward())


def test_no_host_sync_compiled(backend):
    """The same under torch.compile (inductor), after the compiling call."""
    model = torch.compile(mlp(prune_bias=True), fullgraph=True)
    x = torch.randn(16, 64, device="cuda")
    model(x).sum().backward()
    run_without_host_sync(lambda: model(x).sum().backward())


def test_upstream_hook_syncs_with_prune_bias():
    """Why the check above matters: upstream's `bias[~mask] = 0` synchronises the host."""
    model = mlp(UpstreamFSS, UpstreamBiasHook, prune_bias=True)
    x = torch.randn(16, 64, device="cuda")
    with pytest.raises(RuntimeError, match="(?i)synchroniz"):
        run_without_host_sync(lambda: model(x))


def test_non_default_stream(backend):
    """Our launches follow the current stream: a producer on a side stream is seen."""
    mask = random_mask(4096)
    src = torch.randn(4096, 1024, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        w = src
        for _ in range(20):  # keep the side stream busy so a wrong-stream launch would race
            w = w * 1.0001
        ours = FakeStructuredSparsity(mask)(w)
        lin = prepare_module(nn.Linear(8, 4096).cuda(), mask.clone(), prune_bias=True)
        out = torch.randn(64, 4096, device="cuda")
        expected_out = out + torch.where(mask, lin._bias.detach(), 0)
        got_out = lin._forward_hooks[next(iter(lin._forward_hooks))](lin, None, out.clone())
    stream.synchronize()
    assert torch.equal(ours, torch.where(mask[:, None], w, 0))
    assert torch.equal(got_out, expected_out)


def test_cuda_graph_capture_and_mask_edits(backend):
    model = mlp()
    reference = copy.deepcopy(model)
    static_x = torch.randn(16, 64, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.no_grad():
        for _ in range(2):  # warm-up (Triton compiles on first launch) outside the capture
            model(static_x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        static_y = model(static_x)

    for step in range(3):
        new_x = torch.randn(16, 64, device="cuda")
        static_x.copy_(new_x)
        for m, r in ((model[0], reference[0]), (model[2], reference[2])):  # a pruner's step(): in place
            m.parametrizations.weight[0].mask[step] = False
            r.parametrizations.weight[0].mask[step] = False
        graph.replay()
        torch.cuda.synchronize()
        with torch.no_grad():
            expected = reference(new_x)
        assert torch.equal(static_y, expected)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_peak_memory_no_higher_than_upstream(backend, dtype):
    """Forward+backward of a parametrized Linear peaks no higher than upstream's."""
    mask = random_mask(4096)

    def build(param_cls, hook_cls):
        torch.manual_seed(0)
        lin = nn.Linear(4096, 4096, device="cuda", dtype=dtype)
        return prepare_module(lin, mask.clone(), prune_bias=True, parametrization=param_cls, hook=hook_cls)

    def peak(lin):
        x = torch.randn(1024, 4096, device="cuda", dtype=dtype, requires_grad=True)
        lin.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        lin(x).sum().backward()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    ours, theirs = build(FakeStructuredSparsity, BiasHook), build(UpstreamFSS, UpstreamBiasHook)
    peak(ours), peak(theirs)  # warm-up: kernel compiles, cuBLAS workspace
    p_ours, p_theirs = peak(ours), peak(theirs)
    assert p_theirs > 1024 * 4096 * 2  # measured something
    assert p_ours <= p_theirs + (64 << 10), (p_ours, p_theirs)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_layer_on_second_gpu_while_first_is_current(backend):
    """Triton launches on the *current* device: a layer on cuda:1 with cuda:0 current must still
    compute on cuda:1 (the launch's device guard), forward, backward and bias hook, as upstream."""
    torch.manual_seed(0)
    ours = prepare_module(nn.Linear(256, 4096).to("cuda:1"), random_mask(4096, device="cuda:1"))
    ref = copy.deepcopy(ours)
    ref_param = UpstreamFSS(ref.parametrizations.weight[0].mask)
    ref.parametrizations.weight[0] = ref_param
    ref._forward_hooks.clear()
    ref.register_forward_hook(UpstreamBiasHook(ref_param, True))
    x = torch.randn(64, 256, device="cuda:1")
    torch.cuda.set_device(0)
    with structprune_triton.use_backend(backend):
        y = ours(x)
        y.square().sum().backward()
    y_ref = ref(x)
    y_ref.square().sum().backward()
    torch.cuda.synchronize(1)
    assert y.device == torch.device("cuda:1")
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(ours.parametrizations.weight.original.grad, ref.parametrizations.weight.original.grad)


def test_device_guard_only_switches_for_another_device(monkeypatch):
    """The guard costs a device-index comparison per launch: on the current device no device
    switch happens (counted through ``torch.cuda.device``)."""
    from structprune_triton import launch

    entered = []
    real = torch.cuda.device
    monkeypatch.setattr(launch.torch.cuda, "device", lambda d: entered.append(d) or real(d))
    x = torch.randn(2048, 1024, device="cuda", requires_grad=True)
    mask = random_mask(2048)
    with structprune_triton.use_backend("triton"):
        FakeStructuredSparsity(mask)(x).sum().backward()
    torch.cuda.synchronize()
    assert entered == []
