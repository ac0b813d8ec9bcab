"""What a run decides after training, on its validation split only: the calibration of its
probabilities and its operating point (the threshold, or the multi-class decision rule). The test
split is then scored once, at that point, with the positive class stated.

Why here and in this order: the threshold is chosen on the probabilities the model will output, so the
calibration is fitted first; and both are chosen on validation, so the test result is an honest estimate
of what the model will do on new patients at that threshold.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..data import TaskDataset
from ..data.positive import Positive
from ..evaluation.calibration import calibration_summary, fit_calibration
from ..evaluation.threshold import OperatingPoint, choose_operating_point, decisions
from ..models.backbones import Classifier
from ..models.calibration import Calibration
from ..models.inference import logits, probabilities

MIN_TEST_PER_CLASS = 10  # fewer test examples of a class than this: its sensitivity has a very wide CI


@dataclass
class Decision:
    """The run's choices on validation: positive class, calibration block, operating point."""
    positive: Positive | None
    point: OperatingPoint
    calibration: dict | None = None  # metrics.json "calibration" (None: not calibrated)
    warnings: list[str] = field(default_factory=list)

    def to_model_json(self, classes: list[str]) -> dict:
        """model.json's record of the decision: what `predict` and `evaluate` apply to new data."""
        out = {"operating_point": self.point.to_dict(classes)}
        if self.positive is not None:
            out["positive"] = self.positive.name
        return out


def decide(model: Classifier, data: TaskDataset, positive: Positive | None, rule, method: str) -> Decision:
    """Calibrate `model` in place on data.val (when `method` is not none), then choose the operating
    point on the calibrated validation probabilities."""
    warnings = [positive.warning] if positive is not None and positive.warning else []
    index = positive.index if positive is not None else 1
    model.calibration = None  # a source model's calibration is not this run's
    val = data.val
    raw_val = logits(model, val.x)  # the one validation pass: calibration and threshold both read it
    calibration = calibrate(model, data, raw_val, method, index, warnings)
    prob = calibrated_prob(model, raw_val, data.task)
    prior = None
    if data.task == "multiclass" and len(data.train):
        prior = np.bincount(data.train.y.numpy(), minlength=data.num_outputs) / len(data.train)
    point = choose_operating_point(rule, val.y.numpy(), prob, data.task, positive=index, train_prior=prior)
    return Decision(positive, point, calibration, warnings + list(point.warnings))


def calibrate(model: Classifier, data: TaskDataset, raw_val: np.ndarray, method: str, positive: int,
              warnings: list[str]) -> dict | None:
    """Fit `method` on the validation logits `raw_val` and attach it to the model; the block for
    metrics.json holds ECE, Brier and calibration slope / intercept before and after on validation, and
    before on test (after on test is the run's test block itself)."""
    if method == "none":
        return None
    val, test, task = data.val, data.test, data.task
    if len(val) == 0:
        warnings.append(f"--calibrate {method} needs labelled validation examples and this run has none; the "
                        "probabilities are not calibrated")
        return {"method": "none", "requested": method}
    params = fit_calibration(method, raw_val, val.y.numpy(), task)
    if params is None:
        warnings.append(f"--calibrate {method}: too few validation examples of each class to fit it; the "
                        "probabilities are not calibrated")
        return {"method": "none", "requested": method}
    summary = {"val_before": calibration_summary(val.y.numpy(), as_prob(raw_val, task), task, positive)}
    if len(test):
        summary["test_before"] = calibration_summary(test.y.numpy(), as_prob(logits(model, test.x), task), task,
                                                     positive)
    model.calibration = Calibration.from_params(method, params, data.num_outputs).to(next(model.parameters()).device)
    summary["val_after"] = calibration_summary(val.y.numpy(), calibrated_prob(model, raw_val, task), task, positive)
    return {"method": method, "params": params, **summary}


def as_prob(raw: np.ndarray, task: str) -> np.ndarray:
    return probabilities(torch.from_numpy(raw), task).numpy()


@torch.no_grad()
def calibrated_prob(model: Classifier, raw: np.ndarray, task: str) -> np.ndarray:
    """The probabilities the model gives for these head logits: through its calibration when it has one
    (the same module its forward runs), so validation is not run through the network again."""
    out = torch.from_numpy(raw)
    if model.calibration is not None:
        out = model.calibration.cpu()(out)
        model.calibration.to(next(model.parameters()).device)
    return probabilities(out.float(), task).numpy()


def scoring_options(point: OperatingPoint, classes: list[str]) -> dict:
    """The keyword arguments `compute_metrics` scores at `point` with: one place for the run's own test
    split, `evaluate` and `predict`."""
    return dict(threshold=point.threshold, positive=point.positive, class_weights=point.class_weights,
                classes=classes)


def decided(prob: np.ndarray, task: str, point: OperatingPoint) -> np.ndarray | None:
    """The class index each example is decided as at the operating point (None for multilabel)."""
    return None if task == "multilabel" else np.asarray(decisions(prob, task, point), dtype=np.int64)


def class_names(indices: np.ndarray | None, classes: list[str]) -> list[str] | None:
    """Class indices as their names (vectorised), None passed through."""
    return None if indices is None else np.asarray(classes, dtype=object)[indices].tolist()


def test_warnings(data: TaskDataset, predicted: np.ndarray | None, decision: Decision) -> list[str]:
    """What a reader of the test numbers must know: every decision in one class (`predicted`: the class
    indices), or a class with so few test examples that its sensitivity rests on a handful of patients."""
    warnings = []
    if predicted is not None and len(np.unique(predicted)) == 1 and data.num_outputs > 1:
        point = decision.point
        at = f"threshold {point.threshold:.4g}" if point.threshold is not None else f"the {point.rule} rule"
        name = data.classes[predicted[0]]
        warnings.append(f"every test example is predicted {name!r} at the operating point ({at}): the "
                        "model decides one class for everyone, so its sensitivity or specificity is 0; do not use "
                        "it as it is (try --class-weight balanced, another --threshold, or more labels)")
    if data.task != "multilabel" and len(data.test):
        counts = np.bincount(data.test.y.numpy(), minlength=data.num_outputs)
        few = [f"{c!r} ({n})" for c, n in zip(data.classes, counts) if n < MIN_TEST_PER_CLASS]
        if few:
            warnings.append(f"the test split holds fewer than {MIN_TEST_PER_CLASS} examples of {', '.join(few)}; "
                            "sensitivity, specificity and their CIs for that class rest on very few patients")
    return warnings


def counts(indices, classes: list[str]) -> dict:
    """{class: how many} of class indices, in class order."""
    found = np.bincount(np.asarray(indices, dtype=np.int64), minlength=len(classes))
    return {c: int(n) for c, n in zip(classes, found)}
