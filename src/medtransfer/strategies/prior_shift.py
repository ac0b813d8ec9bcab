"""Prior-shift (label-shift) correction: the source model, its probabilities moved to the target's
class prior, estimated from the unlabelled target data.

Under label shift (p(x|y) the same at both hospitals, only p(y) differs) the target posterior is
p_t(y|x) proportional to p_s(y|x) * pi_t(y) / pi_s(y). The source prior pi_s is the source
training split's; pi_t is estimated without target labels by EM (Saerens et al. 2002, the default)
on temperature-calibrated source posteriors, or by BBSE (Lipton et al. 2018; `prior-shift-bbse`).
The temperature T is fitted on the source validation split. The correction is written into the
head -- weights / T, bias / T + log(pi_t / pi_s) -- which is exact for softmax outputs, so the result
is an ordinary checkpoint. For a binary task it leaves the ranking (AUC) unchanged and moves
calibration, the 0.5 threshold and the Brier score. Labelled target examples (if any) are not used.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import MedTransferError
from ..evaluation.label_shift import bbse_prior, em_prior, fit_temperature, softmax
from ..models.backbones import Classifier
from ..models.inference import logits
from .base import Strategy, TransferContext, register
from .source_model import unchanged_source

PRIOR_FLOOR = 1e-3  # an estimated prior of 0 would give a log of -inf


def correct_head(model: Classifier, temperature: float, source_prior: np.ndarray, target_prior: np.ndarray) -> None:
    """logits -> logits / T + log(pi_t / pi_s), folded into the linear head."""
    target_prior = np.clip(target_prior, PRIOR_FLOOR, None)
    target_prior = target_prior / target_prior.sum()
    shift = torch.as_tensor(np.log(target_prior / np.clip(source_prior, PRIOR_FLOOR, None)), dtype=torch.float32)
    model.head.weight.data /= temperature
    model.head.bias.data = model.head.bias.data / temperature + shift.to(model.head.bias.device)


class PriorShiftStrategy(Strategy):
    needs_source_data = True
    needs_unlabelled_target = True
    needs_labels = False
    estimator = "em"

    def run(self, ctx: TransferContext) -> Classifier:
        model = unchanged_source(ctx, self.name)
        if ctx.target.task == "multilabel":
            raise MedTransferError(f"{self.name} needs a single-label task (binary or multiclass), not multi-label")
        if ctx.source_data is None:
            raise MedTransferError(f"{self.name} needs --source to be a source dataset (e.g. heart:cleveland): its "
                                   "training split gives the source prior, its validation split the calibration")
        if ctx.unlabelled is None or len(ctx.unlabelled) == 0:
            raise MedTransferError(f"{self.name} needs unlabelled target examples; the target's training split "
                                   "is empty")
        source = ctx.source_data
        k = ctx.target.num_classes
        source_prior = np.bincount(source.train.y.numpy(), minlength=k) / len(source.train)
        logits_val, logits_target = logits(model, source.val.x), logits(model, ctx.unlabelled)
        temperature = fit_temperature(logits_val, source.val.y.numpy())
        if self.estimator == "em":
            target_prior = em_prior(softmax(logits_target / temperature), source_prior)
        else:
            target_prior = bbse_prior(source.val.y.numpy(), logits_val.argmax(1), logits_target.argmax(1), k)
        correct_head(model, temperature, source_prior, target_prior)
        ctx.notes.update(estimator=self.estimator, temperature=temperature,
                         source_prior=dict(zip(ctx.target.classes, source_prior.round(4).tolist())),
                         target_prior=dict(zip(ctx.target.classes, np.round(target_prior, 4).tolist())),
                         unlabelled_target=len(ctx.unlabelled))
        return model


@register
class PriorShift(PriorShiftStrategy):
    name = "prior-shift"
    summary = "source model, probabilities moved to the target prior estimated by EM on unlabelled target data"


@register
class PriorShiftBBSE(PriorShiftStrategy):
    name = "prior-shift-bbse"
    summary = "as prior-shift, the target prior estimated by BBSE (black-box shift estimation)"
    estimator = "bbse"
