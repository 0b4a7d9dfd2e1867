"""Drop-in structured pruners: upstream's ``torch.ao.pruning._experimental.pruner`` classes,
registering this package's :class:`~structprune_triton.parametrization.FakeStructuredSparsity`
and :class:`~structprune_triton.parametrization.BiasHook`. Change one import::

    # from torch.ao.pruning._experimental.pruner import SaliencyPruner
    from structprune_triton.pruner import SaliencyPruner

Every class here subclasses upstream's class of the same name (``isinstance(p,
upstream.SaliencyPruner)`` holds), and our parametrization and hook subclass upstream's, so
upstream's ``prune()`` patterns and prune functions, ``update_mask`` implementations, ``step``
and ``squash_mask`` run unchanged. What is changed, and why:

* ``_prepare`` is ours (same behaviour as upstream's, our classes as defaults).
* ``load_state_dict`` is ours: upstream's looks for the *unstructured* ``FakeSparsity``, does not
  find it on a structured pruner's model, registers a second (unstructured) parametrization and the
  next forward fails; it also pops the masks out of the state dict it is given. Ours restores the
  masks into the structured parametrizations and leaves its argument alone.
* ``step`` is upstream's, then bumps the version counter of every mask (upstream's ``update_mask``
  edits ``mask.data``, which no version check sees), so that anything caching what a mask held
  (:func:`~structprune_triton.skip_masked_rows`' live sets) sees the edit at its next call.
* ``prune`` first shrinks, from the model's ``torch.fx`` graph, the shapes upstream's patterns do not
  cover (:mod:`structprune_triton.graph.prune`): a layer followed by a BatchNorm masked with
  ``prune_norm``, gated MLPs ``down(act(gate(x)) * up(x))``, a masked layer whose masked outputs
  reach the next layer as exact zeros through element-wise ops, pooling and a flatten; then runs
  upstream's patterns for the rest. What neither covers raises a ``RuntimeError`` naming the layer
  and the op in the way, before anything is changed. A layer whose parameters ``prune`` (or
  ``squash_mask``) replaces loses an instance-level ``forward`` override (as
  :func:`~structprune_triton.skip_masked_rows` installs: it was written for the masked layer), so
  plain torch modules come back.
* ``prune_norm`` (config key, default False: upstream's behaviour): a masked layer feeding a
  per-channel affine BatchNorm1d/2d, directly or through ops that keep zero channels zero, masks that
  norm's weight and bias with its own current mask (:class:`structprune_triton.graph.norm_mask.NormMask`),
  so dead channels leave the norm as exact zeros in train and eval mode and ``prune()`` removes them.
* ``state_dict`` returns ``"state"`` as a plain dict (upstream: the live ``defaultdict``, which
  ``torch.load(weights_only=True)``, the default, refuses to load).

A model already prepared with upstream's pruner is sped up in place by :func:`accelerate`; one
module is prepared without a pruner by :func:`prepare_module` (both in :mod:`.prepare`).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.ao.pruning._experimental import pruner as _upstream
from torch.ao.pruning._experimental.pruner import parametrization as _upstream_param
from torch.ao.pruning._experimental.pruner.match_utils import apply_match
from torch.ao.pruning.sparsifier.utils import get_arg_info_from_tensor_fqn
from torch.fx import symbolic_trace
from torch.nn.utils import parametrize
from torch.nn.utils.parametrize import type_before_parametrizations

from .graph.norms import attach_norms, squash_norms
from .graph.prune import plan_prune
from .parametrization import BiasHook, FakeStructuredSparsity
from .prepare import accelerate, prepare_module

__all__ = [
    "BaseStructuredSparsifier",
    "SaliencyPruner",
    "FPGMPruner",
    "LSTMSaliencyPruner",
    "accelerate",
    "prepare_module",
]


class BaseStructuredSparsifier(_upstream.BaseStructuredSparsifier):
    """Upstream's ``BaseStructuredSparsifier`` registering this package's parametrization and hook.

    Subclass it and implement ``update_mask`` exactly as with upstream's base class. The classes
    used by default are the class attributes ``parametrization_class`` and ``bias_hook_class``; a
    group's config key ``"parametrization"`` still overrides the former, as upstream.
    """

    parametrization_class: type[nn.Module] = FakeStructuredSparsity
    bias_hook_class: type = BiasHook

    def _prepare(self, *args: Any, **kwargs: Any) -> None:
        """Attach the mask parametrization to each group's tensor and, on ``nn.Linear`` /
        ``nn.Conv2d``, move ``bias`` into a ``_bias`` Parameter (``module.bias = None``,
        ``module.prune_bias`` from the config, default True) and register a bias hook reading the
        mask of ``module.parametrizations.weight[0]``: upstream's behaviour, with our classes. Then,
        for the groups whose config sets ``prune_norm``, the BatchNorm each layer feeds gets its
        weight and bias masked by the layer's mask (:func:`~structprune_triton.graph.norms.attach_norms`:
        ``ValueError`` for a norm that is not affine, shared or ambiguous; a warning for a layer that
        feeds none)."""
        for config in self.groups:
            module = config["module"]
            tensor_name = config["tensor_name"]
            tensor = getattr(module, tensor_name)
            mask = config.get("mask")
            if mask is None:
                mask = torch.ones(tensor.shape[0], dtype=torch.bool, device=tensor.device)
            self._attach(module, tensor_name, mask, config)
            self.state[config["tensor_fqn"]]["mask"] = mask
        # warnings point at the caller of prepare() (prepare -> _prepare -> attach_norms)
        attach_norms(self.model, [c["module"] for c in self.groups if c.get("prune_norm", False)], stacklevel=3)

    def _attach(self, module: nn.Module, tensor_name: str, mask: torch.Tensor, config: dict[str, Any]) -> None:
        """Prepare ``module.<tensor_name>`` with ``mask`` as upstream's ``_prepare`` does, our classes."""
        prepare_module(
            module,
            mask,
            tensor_name=tensor_name,
            prune_bias=config.get("prune_bias", True),
            parametrization=config.get("parametrization", self.parametrization_class),
            hook=self.bias_hook_class,
        )

    def step(self, *args: Any, **kwargs: Any) -> None:
        """Upstream's ``step`` (``update_mask`` for every group), then the version counter of every
        group's mask is bumped: upstream's ``update_mask`` edits ``mask.data``, invisible to version
        checks, and observers of the masks compare versions (a layer with
        :func:`~structprune_triton.skip_masked_rows` refreshes its live rows at its next eager call;
        before running a compiled graph call :func:`~structprune_triton.refresh_live_rows`)."""
        super().step(*args, **kwargs)
        for config in self.groups:
            plist = getattr(getattr(config["module"], "parametrizations", None), config["tensor_name"], None)
            masks = {id(m): m for m in (config.get("mask"), plist[0].mask if plist is not None else None)}
            for mask in masks.values():
                if isinstance(mask, torch.Tensor) and not mask.is_inference():
                    torch.autograd.graph.increment_version(mask)

    def prune(self) -> Any:
        """Upstream's ``prune()`` with more shapes (see the module docstring): the model's ``torch.fx``
        graph is checked first and the shapes upstream's patterns do not cover are shrunk, then
        upstream's patterns run; a masked layer neither covers raises ``RuntimeError`` (naming it and
        the op in the way) before anything changes. Returns upstream's traced ``GraphModule``."""
        _check_some_channel_live(self.groups)
        overridden = _forward_overrides(self.model)
        traced = symbolic_trace(self.model)
        modules = dict(traced.named_modules())

        def upstream_takes(node: Any) -> bool:
            return any(apply_match(modules, pattern, node, []) is not None for pattern in self.patterns)

        plan_prune(traced, traced.graph, upstream_takes).apply()
        pruned = super().prune()
        _drop_stale_overrides(overridden)
        return pruned

    def squash_mask(self, *args: Any, **kwargs: Any) -> None:
        """Upstream's ``squash_mask`` (masked values stay in the weights); norms masked by
        ``prune_norm`` keep their masked weight and bias the same way."""
        overridden = _forward_overrides(self.model)
        layers = {config["module"] for config in self.groups}
        squash_norms(self.model, layers)
        super().squash_mask(*args, **kwargs)
        _drop_stale_overrides(overridden)

    def state_dict(self) -> dict[str, Any]:
        """Upstream's ``{"state": ..., "groups": ...}`` (groups without module references), except
        that ``"state"`` is a plain ``dict`` of per-tensor dict copies (the mask tensors themselves
        are not copied) instead of the live ``defaultdict``: ``torch.load`` with its default
        ``weights_only=True`` rejects a ``defaultdict``, and later steps no longer alter a saved
        state dict's structure."""
        sd = super().state_dict()
        sd["state"] = {fqn: dict(s) for fqn, s in self.state.items()}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True) -> None:
        """Restore groups and masks saved by :meth:`state_dict` into the prepared ``self.model``.

        Each saved mask is copied (``clone``, moved to the tensor's device) into the tensor's
        structured parametrization, which ``state[fqn]["mask"]`` then points at. A tensor that is
        not parametrized yet is prepared with the saved mask (parametrization and bias hook, and its
        norm with ``prune_norm``, as :meth:`prepare` would). ``state_dict`` itself is not modified.
        Upstream instead looks for an unstructured ``FakeSparsity``, which breaks the model (see the
        module docstring).
        """
        groups = copy.deepcopy(state_dict["groups"])
        states: dict[str, dict[str, Any]] = {}
        attached = []
        for tensor_fqn, saved in state_dict["state"].items():
            arg_info = get_arg_info_from_tensor_fqn(self.model, tensor_fqn)
            module = arg_info["module"]
            if module is None:
                if strict:
                    raise RuntimeError(f"Error loading {tensor_fqn} into the model")
                continue
            tensor_name = arg_info["tensor_name"]
            state = dict(saved)
            mask = state.get("mask")
            param = _first_structured_param(module, tensor_name)
            if mask is not None:
                device = getattr(module, tensor_name).device
                mask = mask.detach().clone().to(device)
                if param is None:
                    config = next((g for g in groups if g["tensor_fqn"] == tensor_fqn), {})
                    self._attach(module, tensor_name, mask, config)
                    if config.get("prune_norm", False):
                        attached.append(module)
                else:
                    param.mask = mask
                state["mask"] = mask
            elif param is not None:
                state["mask"] = param.mask
            states[tensor_fqn] = state
        for group in groups:
            arg_info = get_arg_info_from_tensor_fqn(self.model, group["tensor_fqn"])
            if arg_info["module"] is not None:
                group.update(arg_info)
        self.state.clear()
        self.state.update(states)
        self.groups = groups
        attach_norms(self.model, attached, stacklevel=2)


def _check_some_channel_live(groups: list[dict[str, Any]]) -> None:
    """Raise ``RuntimeError`` if ``prune()`` would leave a convolution, or a BatchNorm masked with
    ``prune_norm``, with no channel: torch cannot run those (an ``nn.Linear`` with no output is
    fine, and is pruned as upstream does)."""
    for config in groups:
        module = config["module"]
        param = _first_structured_param(module, config["tensor_name"])
        if param is None or not isinstance(param.mask, torch.Tensor) or bool(param.mask.any()):
            continue
        if isinstance(module, nn.Conv2d) or config.get("prune_norm", False):
            what = "convolution" if isinstance(module, nn.Conv2d) else "BatchNorm it feeds (prune_norm)"
            raise RuntimeError(
                f"prune(): every output channel of {type_before_parametrizations(module).__name__} "
                f"'{config['module_fqn']}' is masked; "
                f"torch cannot run a {what} with no channels. Keep at least one channel live "
                "(a sparsity_level below 1.0)"
            )


def _parameters_state(module: nn.Module) -> tuple[bool, set[int]]:
    return parametrize.is_parametrized(module), {id(p) for p in module.parameters()}


def _forward_overrides(model: nn.Module) -> dict[nn.Module, tuple[bool, set[int]]]:
    """The modules of ``model`` with an instance-level ``forward``: parametrized or not, and the ids
    of their parameters."""
    return {m: _parameters_state(m) for m in model.modules() if "forward" in m.__dict__}


def _drop_stale_overrides(overridden: dict[nn.Module, tuple[bool, set[int]]]) -> None:
    """Remove the instance-level ``forward`` of the modules whose parameters were replaced or whose
    parametrizations were removed."""
    for module, state in overridden.items():
        if _parameters_state(module) != state:
            module.__dict__.pop("forward", None)


def _first_structured_param(module: nn.Module, tensor_name: str) -> nn.Module | None:
    """The first structured-mask parametrization of a tensor, of upstream's class or any subclass
    (ours included), wherever it sits in the tensor's parametrization list; None if it has none.
    (Looser than ``skip``'s test of a layer that can skip rows, which takes only ours, alone.)"""
    if not parametrize.is_parametrized(module, tensor_name):
        return None
    for p in module.parametrizations[tensor_name]:
        if isinstance(p, _upstream_param.FakeStructuredSparsity):
            return p
    return None


class SaliencyPruner(BaseStructuredSparsifier, _upstream.SaliencyPruner):
    """Upstream's ``SaliencyPruner`` (L1-norm row saliency, ``update_mask`` unchanged) with this
    package's parametrization and bias hook."""


class FPGMPruner(BaseStructuredSparsifier, _upstream.FPGMPruner):
    """Upstream's ``FPGMPruner`` (geometric-median filter pruning; constructor and ``update_mask``
    unchanged) with this package's parametrization and bias hook."""


class LSTMSaliencyPruner(BaseStructuredSparsifier, _upstream.LSTMSaliencyPruner):
    """Upstream's ``LSTMSaliencyPruner`` (per-gate saliency on packed LSTM weights) with this
    package's parametrization; LSTM modules get no bias hook, as upstream."""
