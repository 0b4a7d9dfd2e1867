"""One module per op, each holding its entry point, torch path, kernel launch, custom op, fake and
autograd: ``row_mask`` (the parametrization's arithmetic) and ``bias_add`` (the bias hook's).
Importing this package registers ``torch.ops.structprune_triton.{row_mask, row_mask_backward,
bias_add}``."""

from . import bias_add, row_mask  # noqa: F401
