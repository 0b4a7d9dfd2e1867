"""Drop-in replacements for upstream's ``torch.ao.pruning._experimental.pruner.parametrization``.

Kept from upstream: class hierarchy (``isinstance`` checks in upstream's pruner and prune functions
keep working), constructor, the ``mask`` buffer (edit it in place or assign ``mask.data``: the next
forward sees it), ``state_dict()`` returning ``{}``, error types.

Deliberately changed:

* A row whose mask is 0 is exactly 0 even if the weight holds NaN/inf there (upstream: NaN).
* ``mask`` is a non-persistent buffer: it never appears in a model's ``state_dict`` (upstream keeps
  it out too, by overriding ``state_dict``), so ``load_state_dict(strict=True)`` of a prepared model
  works. The pruner's own ``state_dict`` carries the masks.
* ``BiasHook`` adds the bias along the feature (last) dim of an ``nn.Linear`` output and along the
  channel dim of a convolution's output (upstream always uses dim 1, wrong for (B, T, C) inputs);
  ``prune_bias`` zeroes the entries where ``mask == 0`` for every mask dtype (upstream's ``~mask``
  only means that for bool masks), without a host sync.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.ao.pruning._experimental.pruner import parametrization as _upstream

from .ops.bias_add import add_bias
from .ops.row_mask import row_mask

__all__ = ["FakeStructuredSparsity", "BiasHook", "module_contains_param"]


def module_contains_param(module: nn.Module, parametrization: type) -> bool:
    """True if any parametrization of ``module`` is an instance of ``parametrization`` (upstream's)."""
    return _upstream.module_contains_param(module, parametrization)


class FakeStructuredSparsity(_upstream.FakeStructuredSparsity):
    """Row-wise (dim 0) mask parametrization, computed by Triton kernels; compiles with Dynamo."""

    def __init__(self, mask: Tensor) -> None:
        nn.Module.__init__(self)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        # row_mask validates as upstream's forward does (same checks, order and exception types)
        return row_mask(x, self.mask)


def bias_dim(module: nn.Module, output: Tensor) -> int:
    """The dim of ``output`` that ``module``'s bias runs along."""
    if isinstance(module, nn.Linear):
        return output.dim() - 1
    if isinstance(module, nn.modules.conv._ConvNd):
        return output.dim() - len(module.kernel_size) - 1
    return 1


class BiasHook(_upstream.BiasHook):
    """Forward hook adding ``module._bias`` (masked in place if ``prune_bias``) to the output."""

    def __init__(self, parametrization: nn.Module, prune_bias: bool) -> None:
        super().__init__(parametrization, prune_bias)

    def __call__(self, module: nn.Module, input, output: Tensor) -> Tensor:
        bias = getattr(module, "_bias", None)
        if bias is None:
            return output
        return add_bias(output, bias, self.param.mask, bias_dim(module, output), self.prune_bias)
