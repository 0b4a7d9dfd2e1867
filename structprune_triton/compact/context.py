"""The ``compact_training`` context: compacts the layers, keeps the optimizer pointed at the compact
parameters, watches the masks, and writes everything back exactly (see the package docstring)."""

from __future__ import annotations

import functools
import sys
import weakref
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..skip import LiveRowsForward, refresh_live_rows
from ..skip.live import MaskWatch, plain_layer, skippable_param
from .blocks import Piece, same_block
from .forward import CompactForward
from .handoff import LOST, Segment, find_segments
from .inputs import live_inputs
from .replay import Record
from .support import check_distributed, check_groups, check_optimizer
from .swap import compact_in, give_back, show, write_back, zero_grads

__all__ = ["CompactTraining"]

_ACTIVE: weakref.WeakSet = weakref.WeakSet()  # models and optimizers inside a block


class CompactTraining:
    """Context manager returned by :func:`~structprune_triton.compact_training` (see there)."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        compact_activations: bool = True,
        verify: bool = True,
        allow_distributed: bool = False,
    ) -> None:
        check_optimizer(optimizer)
        check_distributed(model, allow_distributed)
        self.model = model
        self.optimizer = optimizer
        self.verify = verify
        self.compact_activations = compact_activations
        self.segments: list[Segment] = []
        self.in_root = False  # inside a call of the root model (compact activations only there)
        self.layers: list[CompactForward] = []
        self._handles: list[Any] = []
        self._zero_grads: dict[nn.Module, Any] = {}
        self._masks: list[MaskWatch] = []
        self._suspect = False  # masks may have changed invisibly (a pruner read the weights)
        self._retry = False  # a layer stayed dense for a pending gradient: compact it when cleared
        self._pending: Record | None = None
        self._stash: dict[Piece, Any] = {}  # compact optimizer state while state_dict() shows full

    # ---- entering and leaving ------------------------------------------------------------------

    def __enter__(self) -> CompactTraining:
        for obj in (self.model, self.optimizer):
            if obj in _ACTIVE:
                raise RuntimeError(
                    f"compact_training: this {type(obj).__name__} is already inside a compact_training block"
                )
        _ACTIVE.add(self.model)
        _ACTIVE.add(self.optimizer)
        try:
            self._install()
            self.refresh()
        except BaseException:
            self._leave()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self._leave()

    def _install(self) -> None:
        trained = {id(p) for g in self.optimizer.param_groups for p in g["params"]}
        inputs = live_inputs(self.model)
        for module in self.model.modules():
            own = module.__dict__.get("forward")
            if (own is not None and not isinstance(own, LiveRowsForward)) or not plain_layer(module):
                continue
            structured = skippable_param(module) is not None
            if parametrize.is_parametrized(module, "weight") and not structured:
                continue  # another parametrization: its arithmetic would be skipped
            weight = module.parametrizations.weight.original if structured else module.weight
            if id(weight) not in trained or (not structured and module not in inputs):
                continue
            if structured and getattr(module.parametrizations.weight[0].mask, "requires_grad", False):
                raise ValueError(
                    "compact_training: a mask that requires grad (a learned mask) needs the gradient of its dead "
                    "rows, which compact layers never compute; train it outside the block"
                )
            layer = CompactForward(self, module, inputs.get(module))
            module.forward = layer
            self.layers.append(layer)
        if self.compact_activations:
            self.segments = find_segments(self.model, {layer.module: layer for layer in self.layers})
        for segment in self.segments:
            segment.install()
            segment.producer.segment_out = segment
            segment.consumer.segment_in = segment
        opt, model = self.optimizer, self.model
        self._handles += [
            opt.register_step_pre_hook(self._before_step),
            opt.register_step_post_hook(self._after_step),
            opt.register_state_dict_pre_hook(self._before_optimizer_state_dict),
            opt.register_state_dict_post_hook(self._after_optimizer_state_dict),
            opt.register_load_state_dict_pre_hook(self._before_load),
            opt.register_load_state_dict_post_hook(self._after_load),
            model.register_forward_pre_hook(self._before_forward),
            model.register_forward_hook(self._after_forward, always_call=True),
        ]
        names = {m: n for n, m in model.named_modules()}
        under: dict[str, list[CompactForward]] = {}  # module name -> the compacted layers inside it
        for layer in self.layers:
            parts = names[layer.module].split(".") if names[layer.module] else []
            for depth in range(len(parts) + 1):
                under.setdefault(".".join(parts[:depth]), []).append(layer)
        for name, module in model.named_modules():
            self._handles += [
                module.register_state_dict_pre_hook(self._before_state_dict),
                module.register_load_state_dict_pre_hook(self._before_load),
                module.register_load_state_dict_post_hook(self._after_load),
            ]
            if name in under:  # model.zero_grad() must clear the compact gradients too
                self._zero_grads[module] = module.__dict__.get("zero_grad")
                module.zero_grad = functools.partial(self._zero_grad, module, under[name])

    def _leave(self) -> None:
        try:
            self._uncompact([layer for layer in self.layers if layer.piece is not None])
        finally:
            for segment in self.segments:
                segment.uninstall()
            self.segments = []
            for handle in self._handles:
                handle.remove()
            self._handles = []
            for module, previous in self._zero_grads.items():
                del module.__dict__["zero_grad"]
                if previous is not None:
                    module.zero_grad = previous
            self._zero_grads = {}
            skipping = False
            for layer in self.layers:
                del layer.module.__dict__["forward"]
                if layer.previous is not None:
                    layer.module.forward = layer.previous
                    skipping = True
            self.layers = []
            _ACTIVE.discard(self.model)
            _ACTIVE.discard(self.optimizer)
            if skipping:
                refresh_live_rows(self.model)  # the masks may have changed while skipping was off

    # ---- the user's handles --------------------------------------------------------------------

    def parameters(self) -> list[nn.Parameter]:
        """The model's parameters as they train inside the block: each compacted parameter replaced
        by its compact one. Clip gradients over these (``torch.nn.utils.clip_grad_norm_(ctx.parameters(),
        ...)``): the norm equals masked dense's over ``model.parameters()``, whose dead entries have
        zero gradients."""
        compact = {id(layer.piece.full): layer.piece.compact for layer in self.layers if layer.piece is not None}
        return [compact.get(id(p), p) for p in self.model.parameters()]

    def sync(self) -> None:
        """Write the compact parameters and optimizer state back into the full ones now, exactly
        (the block stays on). Called by itself before ``state_dict()`` and when ``module.weight``
        of a compacted masked layer is read."""
        pieces = self._pieces()
        if any(p.records or p.compact._version != p.version for p in pieces):
            self._write(pieces)

    def refresh(self) -> None:
        """Re-read every mask and re-compact the layers whose live rows or input columns changed
        (their compact parameters are written back first). Called by itself on a visible mask
        change; call it after editing masks through ``.data``."""
        with torch.no_grad(), torch.inference_mode(False):
            self._suspect = self._retry = False
            wanted = [(layer, *layer.wanted()) for layer in self.layers]
            changed = [(layer, rows, cols) for layer, rows, cols in wanted if not same_block(layer.piece, rows, cols)]
            self._uncompact([layer for layer, _, _ in changed if layer.piece is not None])
            for layer, rows, cols in changed:
                if rows is not None or cols is not None:
                    self._compact(layer, rows, cols)
            for segment in self.segments:
                segment.refresh()
            self._remember_masks()

    # ---- compaction and write-back -------------------------------------------------------------

    def _pieces(self) -> list[Piece]:
        return [layer.piece for layer in self.layers if layer.piece is not None]

    def _compact(self, layer: CompactForward, rows: Any, cols: Any) -> None:
        piece = compact_in(self.optimizer, layer.weight(), rows, cols)
        if piece is None:
            self._retry = True  # the layer trains dense until its gradient is cleared
            return
        layer.set_piece(piece)
        if layer.structured:
            layer.read_hook = layer.module.parametrizations.weight.register_forward_pre_hook(self._weight_read)

    def _write(self, pieces: list[Piece]) -> None:
        write_back(self.optimizer, pieces)

    def _uncompact(self, layers: list[CompactForward]) -> None:
        give_back(self.optimizer, [layer.piece for layer in layers])
        for layer in layers:
            layer.set_piece(None)
            if layer.read_hook is not None:
                layer.read_hook.remove()
                layer.read_hook = None

    # ---- noticing mask changes -----------------------------------------------------------------

    def _remember_masks(self) -> None:
        self._masks = [MaskWatch(m) for m in self.model.modules() if "parametrizations" in m._modules]
        for layer in self.layers:
            layer.watch.take()

    def _masks_moved(self) -> bool:
        return any(watch.changed() for watch in self._masks)

    def check(self) -> None:
        """Refresh if a mask changed visibly, or may have changed since a pruner read the weights."""
        if self._suspect or self._retry or self._masks_moved():
            self.refresh()

    def check_layer(self, layer: CompactForward) -> None:
        if self._suspect or self._retry or layer.watch.changed():
            self.refresh()

    # ---- hooks ---------------------------------------------------------------------------------

    def _before_forward(self, module: nn.Module, args: Any) -> None:
        if not torch.compiler.is_compiling():
            self.check()
            self.in_root = True
            for segment in self.segments:
                segment.reset()

    def _after_forward(self, module: nn.Module, args: Any, output: Any) -> None:
        if torch.compiler.is_compiling():
            return
        self.in_root = False
        lost = any(segment.in_flight is not None for segment in self.segments)
        for segment in self.segments:
            segment.reset()
        if lost and sys.exc_info()[0] is None:  # (with an exception in flight the forward failed anyway)
            raise RuntimeError(LOST)

    def _weight_read(self, module: nn.Module, args: Any) -> None:
        # module.weight of a compacted layer is being computed (e.g. by a pruner's update_mask):
        # make it exact, and look at the masks again before the next forward
        if not torch.compiler.is_compiling():
            self.sync()
            self._suspect = True

    def _before_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        check_groups(optimizer)
        fulls = {id(p.full) for p in self._pieces()}
        if any(id(p) in fulls for g in optimizer.param_groups for p in g["params"]):
            raise RuntimeError("compact_training: a compacted parameter was added to the optimizer inside the block")
        self._pending = Record(optimizer)

    def _after_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        record, self._pending = self._pending, None
        for piece in self._pieces():
            if piece.compact.grad is not None:
                piece.records.append(record)
        self.check()

    def _before_state_dict(self, module: nn.Module, prefix: str, keep_vars: bool) -> None:
        self.sync()

    def _before_optimizer_state_dict(self, optimizer: torch.optim.Optimizer) -> None:
        self.sync()
        show(optimizer, self._pieces(), self._stash, full=True)

    def _after_optimizer_state_dict(self, optimizer: torch.optim.Optimizer, state_dict: dict) -> None:
        show(optimizer, self._pieces(), self._stash, full=False)

    def _before_load(self, *args: Any) -> None:
        self._uncompact([layer for layer in self.layers if layer.piece is not None])
        self._suspect = True  # re-compact at the next check even if loading fails half-way

    def _after_load(self, *args: Any) -> None:
        self.check()

    def _zero_grad(self, module: nn.Module, layers: list[CompactForward], set_to_none: bool = True) -> None:
        previous = self._zero_grads.get(module)
        (previous or functools.partial(type(module).zero_grad, module))(set_to_none)
        zero_grads([layer.piece for layer in layers if layer.piece is not None], set_to_none)

    def __repr__(self) -> str:
        lines = [f"  {type(layer.module).__name__}: {layer!r}" for layer in self.layers]
        return "CompactTraining(\n" + "\n".join(lines) + "\n)"
