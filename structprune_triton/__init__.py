"""structprune_triton: PyTorch structured pruning (``torch.ao.pruning._experimental.pruner``)
with Triton kernels behind the same interface. Change one import:

    from structprune_triton import FakeStructuredSparsity, BiasHook, module_contains_param
"""

from . import ops  # noqa: F401  (registers torch.ops.structprune_triton.*)
from ._backend import get_backend, set_backend
from .functional import bias_hook, row_mask
from .parametrization import BiasHook, FakeStructuredSparsity, module_contains_param
from .pruner import accelerate
from .skip import refresh_live_rows, skip_masked_rows

__version__ = "0.1.0"

__all__ = [
    "FakeStructuredSparsity",
    "BiasHook",
    "module_contains_param",
    "row_mask",
    "bias_hook",
    "accelerate",
    "skip_masked_rows",
    "refresh_live_rows",
    "set_backend",
    "get_backend",
]
