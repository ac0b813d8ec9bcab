"""Opacus-compatible models, and checkpoints that remember how they were made so.

DP-SGD needs one gradient per training example. A trainable BatchNorm computes each example's output
from the statistics of its whole batch (and stores them in its running buffers), so examples are not
separable and its buffers leak the private batch: Opacus's `ModuleValidator` refuses it and its fixer
replaces it by GroupNorm (likewise LSTM/GRU -> Opacus's DP variants). The replacement changes the
module's weights (a fresh GroupNorm, no running statistics), so the backbone modules replaced are
recorded in the architecture under OPACUS_FIXED and `build_backbone` repeats the same replacement when
a checkpoint is loaded: the saved weights then fit strictly. Frozen modules are left as they are (they
run in eval mode, on their stored statistics, which are the source's, not the private data's).
"""

from __future__ import annotations

from torch import nn

from ..errors import MedTransferError

OPACUS_FIXED = "opacus_fixed"  # architecture key: backbone module names Opacus's fixer replaced


def make_private_compatible(model: nn.Module) -> tuple[dict[str, str], dict[int, nn.Parameter]]:
    """Replace, in place, every trainable module Opacus cannot train privately (BatchNorm -> GroupNorm)
    by its Opacus fix; record the names in `model.architecture` when the model is a Classifier.

    Returns (replaced module name, relative to `model` -> "BatchNorm1d -> GroupNorm"; old parameter id ->
    new parameter, so an optimizer's parameter groups can follow). Raises MedTransferError, in one line,
    when a trainable module remains that Opacus cannot compute per-example gradients for."""
    from opacus.utils.module_utils import trainable_modules
    from opacus.validators import ModuleValidator

    replaced, swap = {}, {}
    for name, module in list(trainable_modules(model)):
        fixer = ModuleValidator.FIXERS.get(type(module))
        if fixer is None or not ModuleValidator.VALIDATORS.get(type(module), lambda m: [])(module):
            continue
        new = fixer(module).to(next(module.parameters()).device)
        set_submodule(model, name, new)
        swap.update(parameter_swap(module, new))
        replaced[name] = f"{type(module).__name__} -> {type(new).__name__}"
    if replaced:
        record(model, list(replaced))
    was_training = model.training
    model.train()  # the validator checks the training-mode model
    try:
        errors = ModuleValidator.validate(model, strict=False)
    finally:
        model.train(was_training)
    if errors:
        detail = " ".join(str(errors[0]).split())[:200]
        raise MedTransferError(f"--dp: this model cannot be trained with differential privacy by Opacus "
                               f"({type(errors[0]).__name__}: {detail}); use another backbone or train without --dp")
    return replaced, swap


def parameter_swap(old: nn.Module, new: nn.Module) -> dict[int, nn.Parameter]:
    """old parameter id -> the parameter of the same name in its replacement (a GroupNorm's weight for
    a BatchNorm's); a parameter with no namesake is dropped from the optimizer."""
    fresh = dict(new.named_parameters())
    return {id(p): fresh.get(name) for name, p in old.named_parameters()}


def record(model: nn.Module, names: list[str]) -> None:
    """The replaced backbone modules, in the Classifier's architecture (a new dict: the context's own
    architecture, which other models are built from, is not touched)."""
    architecture = getattr(model, "architecture", None)
    if not isinstance(architecture, dict) or not hasattr(model, "backbone"):
        return
    outside = [n for n in names if not n.startswith("backbone.")]
    if outside:
        raise MedTransferError(f"--dp: Opacus would replace {outside[0]!r}, outside the backbone, which the "
                               "checkpoint could not rebuild; train this model without --dp")
    known = list(architecture.get(OPACUS_FIXED) or [])
    model.architecture = {**architecture, OPACUS_FIXED: known + [n.removeprefix("backbone.") for n in names]}


def set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def apply_recorded_fixes(backbone: nn.Module, architecture: dict) -> nn.Module:
    """The backbone as a DP run left it: the modules named under OPACUS_FIXED replaced again by Opacus's
    fixer (a checkpoint without the key is returned as built, and Opacus is not imported)."""
    names = architecture.get(OPACUS_FIXED)
    if not names:
        return backbone
    try:
        from opacus.validators import ModuleValidator
    except ImportError:
        raise MedTransferError("this checkpoint was trained with differential privacy (its BatchNorm layers became "
                               "GroupNorm); loading it needs opacus: pip install opacus") from None
    for name in names:
        try:
            module = backbone.get_submodule(name)
        except AttributeError:
            raise MedTransferError(f"the checkpoint's architecture names {name!r} under {OPACUS_FIXED}, which this "
                                   "backbone does not have; restore model.json or re-run the transfer") from None
        fixer = ModuleValidator.FIXERS.get(type(module))
        if fixer is None:
            raise MedTransferError(f"the checkpoint's architecture names {name!r} under {OPACUS_FIXED}, a "
                                   f"{type(module).__name__} Opacus has no fix for; restore model.json")
        set_submodule(backbone, name, fixer(module))
    return backbone
