"""One entry point for token reduction on timm Vision Transformers: `patch(model, method, **kw)` / `unpatch(model)`.

A method lives in its own module (``vit_accel/<method>.py``) and exposes

    apply(model: timm.models.VisionTransformer, undo: Undo, **kw) -> None

which validates the model and arguments (ValueError / TypeError saying what was expected) and changes `model`
in place *only* through `undo` (``undo.swap_class``, ``undo.set_attr``), so that
`unpatch` restores the exact original modules. The method table below maps a name to its module; modules are
imported on first use, so importing `vit_accel` stays cheap.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch.nn as nn

METHODS: dict[str, str] = {
    "tome": "vit_accel.tome",
    "gtp": "vit_accel.gtp",
    "hired": "vit_accel.hired",
    "routing": "vit_accel.routing",
}

_STATE_ATTR = "_vit_accel"


class Undo:
    """Records in-place changes so they can be reverted in reverse order."""

    def __init__(self) -> None:
        self._steps: list[Callable[[], None]] = []

    def swap_class(self, module: nn.Module, new_cls: type) -> None:
        """Give `module` the class `new_cls` (a subclass of its own class, adding no parameters)."""
        old_cls = module.__class__
        if not issubclass(new_cls, old_cls):
            raise TypeError(f"{new_cls.__name__} must subclass {old_cls.__name__}")
        module.__class__ = new_cls
        self._steps.append(lambda: setattr(module, "__class__", old_cls))

    def set_attr(self, obj: Any, name: str, value: Any) -> None:
        """Set `obj.name = value`; undo restores the old value, or deletes the attribute if there was none."""
        missing = object()
        old = obj.__dict__.get(name, missing) if hasattr(obj, "__dict__") else getattr(obj, name, missing)
        if isinstance(obj, nn.Module) and isinstance(value, nn.Module):
            old = obj._modules.get(name, missing)
        setattr(obj, name, value)

        def restore() -> None:
            if old is missing:
                delattr(obj, name)
            else:
                setattr(obj, name, old)

        self._steps.append(restore)

    def __call__(self) -> None:
        while self._steps:
            self._steps.pop()()


@dataclass
class PatchState:
    method: str
    kwargs: dict[str, Any]
    undo: Undo = field(repr=False)


def is_patched(model: nn.Module) -> bool:
    return getattr(model, _STATE_ATTR, None) is not None


def patch_state(model: nn.Module) -> PatchState | None:
    """The method and arguments `model` is patched with, or None."""
    return getattr(model, _STATE_ATTR, None)


def patch(model: nn.Module, method: str, **kwargs: Any) -> nn.Module:
    """Patch a timm ViT in place with a token-reduction `method` (one of `METHODS`); returns `model`.

    Raises ValueError for an unknown method or a model already patched (call `unpatch` first), and the method's
    own ValueError / TypeError for an unsupported model or impossible arguments.
    """
    if method not in METHODS:
        raise ValueError(f"unknown token-reduction method {method!r}; expected one of {sorted(METHODS)}")
    if is_patched(model):
        raise ValueError(f"model is already patched with {patch_state(model).method!r}; call vit_accel.unpatch first")
    module = importlib.import_module(METHODS[method])
    undo = Undo()
    try:
        module.apply(model, undo, **kwargs)
    except BaseException:
        undo()  # leave the model as it was
        raise
    object.__setattr__(model, _STATE_ATTR, PatchState(method, dict(kwargs), undo))
    return model


def unpatch(model: nn.Module) -> nn.Module:
    """Revert `patch`: the model gets back its original classes and attributes. A no-op on an unpatched model."""
    state = patch_state(model)
    if state is not None:
        state.undo()
        object.__delattr__(model, _STATE_ATTR)
    return model
