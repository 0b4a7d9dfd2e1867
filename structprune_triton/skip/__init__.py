"""Train a masked model at (close to) the pruned model's speed: skip what the masks make zero.

For ``y = x @ (W * m)^T`` only the live output rows ``L`` need computing, and when ``x`` comes
from a pruned layer whose masked channels are exactly zero, only its live input columns ``K``::

    forward    y[..., L] = x[..., K] @ W[L][:, K]^T     (dead columns of y: 0, before the bias hook)
    backward   grad_x[..., K] = g[..., L] @ W[L][:, K]
               grad_W[L][:, K] = g[..., L]^T @ x[..., K]  (dead rows and dead input columns: exactly 0)

:func:`skip_masked_rows` does this for every ``nn.Linear`` and ``nn.Conv2d`` (``groups=1``, their
class's own forward). Rows: layers carrying this package's
:class:`~structprune_triton.FakeStructuredSparsity` on ``weight``, prepared as the pruners prepare
them (bias moved to ``_bias`` behind the bias hook). Input columns (``chains=True``): the input
channels the model's ``torch.fx`` graph proves to be exact zeros given the current masks
(:mod:`structprune_triton.graph.channels`, through :mod:`.chains`): a masked layer's dead channels
(``_bias`` pruned or absent, no other forward hook), carried through element-wise ops that map 0
to 0 (evaluated at +0.0 and -0.0 with the op's own parameters: ``Hardtanh(0.1, 1.0)`` does not),
dropout, pooling, a ``Flatten`` of a convolution's output, a BatchNorm masked with the pruners'
``prune_norm``, a product (dead if dead in either factor: ``silu(gate(x)) * up(x)``) and a sum (dead
if dead in every addend). Where that cannot be proven (an unmasked norm, an add with another
tensor, an un-pruned bias, a tensor an op may change in place, an untraceable model, anything
unknown) the layer keeps row skipping only.

Every such layer gets one instance attribute, ``module.forward``, a :class:`LiveRowsForward`:
parameters, buffers, parametrizations, module types, hooks and ``state_dict()`` keys are untouched,
and ``skip_masked_rows(model, enabled=False)`` deletes the attribute again (the dense forward). The
bias hook still runs after the forward. Layer outputs are always the full dense-shaped tensor (the
gathers and scatters are plain torch ops, so eager, autograd and ``torch.compile(fullgraph=True)``
all work). Conv outputs keep the dense path's memory format.

The live set and when it is refreshed (the contract)
-----------------------------------------------------
``idx`` (the live rows, padded with dead rows to a multiple of ``row_multiple``) is computed from
the mask *when the mask changes*, not on every call (it needs one host synchronisation). It is
refreshed (1) by :func:`skip_masked_rows` and :func:`refresh_live_rows` (call it after editing masks
yourself); (2) in eager mode, at the start of a forward whose mask (or, for input columns, the mask
of a layer the proof reads) was visibly replaced or edited (another mask object or storage, a
bumped version counter: host-only checks, no synchronisation). This package's pruners bump every
mask's version counter in ``step()``, so their edits are seen. A refresh is safe under ``no_grad``
and ``inference_mode`` (the index is never an inference tensor).

Edits through ``.data`` (``mask.data[i] = False``, what upstream's ``update_mask`` does; our
pruners' ``step()`` then bumps the version) are invisible to (2), and compiled graphs run no host
check: call :func:`refresh_live_rows` before running a compiled graph on new masks. A row that
*died* since the refresh is still exactly zero (the mask is read on every call). A row that *came
alive* outside ``idx`` would be wrong, so with ``verify=True`` (default) every call checks on the
device, without a host sync (``torch._assert_async``: ``RuntimeError`` on CPU, a device assert on
CUDA), that no row outside ``idx`` is live and, in a chained layer, that the channels it skips are
dead in the current masks and exactly zero in the first sample of its input (one sample: cheap, and
it catches a zero that stopped being one, e.g. a forward hook added after the chain was found; an
empty batch has no sample).
``verify=False`` drops these checks. The checks change no grad mode, so a skipping model
exports (``torch.export``), saves and loads.

Transforms: under forward-mode AD, ``torch.func`` (``grad``, ``vmap``, ``jvp``...) and
``torch.jit.trace`` a skipping layer runs the dense path (the gathers are autograd Functions
without batch or tangent rules, and a trace would bake in the index): upstream's results.

torch.compile: the index tensors are plain attributes, read by the graph on every call. A refresh
within the same padding bucket keeps every shape (no recompile); a new bucket changes a length
(``dynamic=True``: a symbolic size; default ``dynamic=None``: one recompile, then dynamic). Dynamo
gives tensors reached only through a built-in module (an unmasked ``nn.Linear``/``nn.Conv2d``)
static shapes: such a chained layer shares its source's live rows when they are exactly its live
input channels (a single masked layer before it), else its column count is static and a new
bucket recompiles. Switching a layer between skipping and the dense path recompiles. Refresh
before running a compiled graph on a moved model.

When skipping does not pay: at refresh a layer keeps the dense path (for its rows, or its input
columns) when the padded live fraction exceeds ``max_density`` or its weight has fewer than
``min_numel`` elements (the gathers cost more than the rows saved).

NaN/inf in a pruned row never reaches a result or gradient (the gathered rows, padding included,
are masked before use: the exact-zero rule of the dense path). Empty batches run as the dense path.

Limits: what dead channels *would* compute, and the gradient their weights or mask entries would
get, are never computed: masks learned by gradient and activation- or Taylor-based saliency need
``enabled=False`` for those steps (weight-based scores, ``SaliencyPruner`` and ``FPGMPruner``,
work). Sums run over live terms only: results equal the dense masked path up to rounding order. The
gradient reaching a skipped (zero) input channel is zero rather than the dense path's value, which
only ever meets a masked weight row (it changes no parameter or input gradient).
"""

from __future__ import annotations

from torch import nn

from .chains import find_chains
from .live import LiveRowsForward, plain_layer, skippable_param

__all__ = [
    "LIVE_ROW_MULTIPLE",
    "SKIP_MAX_DENSITY",
    "SKIP_MIN_NUMEL",
    "LiveRowsForward",
    "refresh_live_rows",
    "skip_masked_rows",
]

# Defaults of skip_masked_rows' keyword arguments (stored per layer).
# The live set is padded with dead rows to a multiple of this, so that under torch.compile a
# changing live count within the same bucket keeps every shape (no recompile).
LIVE_ROW_MULTIPLE: int = 64
# A layer skips rows (or input columns) only if the padded live fraction is at most this.
# CPU, 1 thread, fwd+bwd, eager, skip vs dense: Linear 1024x1024 batch 256 at density 0.25 / 0.5 /
# 0.75 / 0.9: 2.9x / 1.6x / 1.16x / 0.8x; Linear 512x512 batch 128: 2.1x / 1.3x / 0.9x / 0.74x.
SKIP_MAX_DENSITY: float = 0.75
# Layers whose weight has fewer elements than this take the dense path: the gather, scatter and
# checks cost a fixed ~0.1 ms per call on CPU (Conv2d 64->128 3x3, 16x16, batch 16: 2x at density
# 0.5; Linear 256x256 batch 64: even at 0.5; Conv2d 32->64: slower). To be re-measured on a GPU.
SKIP_MIN_NUMEL: int = 1 << 16


def _installed(module: nn.Module) -> LiveRowsForward | None:
    fwd = module.__dict__.get("forward")
    return fwd if isinstance(fwd, LiveRowsForward) else None


def skip_masked_rows(
    model: nn.Module,
    enabled: bool = True,
    *,
    chains: bool = True,
    verify: bool = True,
    max_density: float = SKIP_MAX_DENSITY,
    min_numel: int = SKIP_MIN_NUMEL,
    row_multiple: int = LIVE_ROW_MULTIPLE,
) -> nn.Module:
    """Make every eligible ``nn.Linear``/``nn.Conv2d`` in ``model`` compute only its live output rows
    and, with ``chains``, only the input channels a pruned layer before it leaves non-zero (forward
    and backward); with ``enabled=False`` restore the dense path everywhere. In place; returns
    ``model``. Calling it again replaces the previous settings. See the module docstring for what is
    eligible, when the live sets are refreshed, ``verify`` (device-side checks, default on) and the
    thresholds ``max_density``, ``min_numel`` and ``row_multiple``."""
    if not 0.0 <= max_density <= 1.0:
        raise ValueError(f"max_density must be in [0, 1], got {max_density}")
    if min_numel < 0 or row_multiple < 1:
        raise ValueError(f"min_numel must be >= 0 and row_multiple >= 1, got {min_numel} and {row_multiple}")
    for module in model.modules():
        if _installed(module) is not None:
            del module.__dict__["forward"]
    if not enabled:
        return model
    settings = {"verify": verify, "max_density": max_density, "min_numel": min_numel, "row_multiple": row_multiple}
    forwards = {m: LiveRowsForward(m, **settings) for m in model.modules() if skippable_param(m) is not None}
    for consumer, inputs in (find_chains(model) if chains else {}).items():
        if plain_layer(consumer):
            forwards.setdefault(consumer, LiveRowsForward(consumer, **settings)).set_inputs(inputs, forwards)
    for module, fwd in forwards.items():
        module.forward = fwd
    refresh_live_rows(model)
    return model


def refresh_live_rows(model: nn.Module) -> int:
    """Recompute the live sets of every layer of ``model`` on which :func:`skip_masked_rows` is
    enabled, from the current masks (one host sync per masked layer), and the input columns of
    chained layers. Call it after editing masks outside a pruner's ``step()`` (which calls it), and
    before a compiled graph runs on them. Returns how many layers now skip rows or input columns."""
    forwards = [f for f in map(_installed, model.modules()) if f is not None]
    for fwd in forwards:
        fwd.refresh_rows()
    for fwd in forwards:
        fwd.refresh_cols()
    return sum(f.skip or f.chain for f in forwards)
