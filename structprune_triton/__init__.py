"""structprune_triton: PyTorch structured pruning (``torch.ao.pruning._experimental.pruner``)
with Triton kernels behind the same interface. Change one import:

    from structprune_triton import FakeStructuredSparsity, BiasHook, module_contains_param
"""

from . import ops  # noqa: F401  (registers torch.ops.structprune_triton.*)
from .compact import compact_training
from .config import Settings, configure, current_settings, settings, use_backend
from .dispatch import describe_backend, kernels_run_on, kernels_serve
from .ops.bias_add import add_bias
from .ops.row_mask import row_mask
from .parametrization import BiasHook, FakeStructuredSparsity, module_contains_param
from .pruner import accelerate, prepare_module
from .skip import refresh_live_rows, skip_masked_rows

__version__ = "0.1.0"

__all__ = [
    "FakeStructuredSparsity",
    "BiasHook",
    "module_contains_param",
    "row_mask",
    "add_bias",
    "accelerate",
    "prepare_module",
    "skip_masked_rows",
    "refresh_live_rows",
    "compact_training",
    "Settings",
    "settings",
    "use_backend",
    "configure",
    "current_settings",
    "describe_backend",
    "kernels_run_on",
    "kernels_serve",
]
