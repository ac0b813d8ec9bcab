"""`auto`: pick the transfer method on validation, as a careful user would, instead of guessing.

Which of linear-probe, lp-ft, full and l2-sp transfers best depends on the source, the target and the
number of labels (issue 14: `full` was the worst method from a low-resolution ImageNet source, the best
elsewhere). Each candidate runs on the same budgeted target from a fresh copy of the source model with
the same seed (so each equals its own `--strategy` run), is scored on the validation split with the key
every model choice uses (`selection_key`), and the best is kept. The test split is never read here. The
chosen candidate's validation score is optimistic (validation chose it); its test score is not.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from ..errors import MedTransferError
from ..evaluation.selection import selection_key, thin_validation
from ..models.backbones import Classifier
from ..models.inference import predict_proba
from .base import STRATEGIES, Strategy, TransferContext, register


@register
class Auto(Strategy):
    name = "auto"
    reads_unlabelled = True  # its linear-probe and lp-ft candidates standardise on the unlabelled inputs
    summary = "runs linear-probe, lp-ft, full and l2-sp; keeps the one with the best validation score"
    # Registry names, tried in this order; a tie on validation goes to the earlier (simpler, cheaper) one.
    candidates = ("linear-probe", "lp-ft", "full", "l2-sp")
    # Tags as the candidates': a source model and labelled target examples (tests check they agree).
    needs_source_model = True
    needs_labels = True
    data_parallel = True  # every candidate is data-parallel; each rank runs them in the same order

    @classmethod
    def accepts(cls, backbone: str | None) -> bool:
        return any(STRATEGIES.lookup(name).accepts(backbone) for name in cls.candidates)

    def run(self, ctx: TransferContext) -> Classifier:
        ctx.require_source_model(self.name)  # one clear message before any candidate runs
        backbone = ctx.architecture.get("name")
        report: dict[str, dict] = {}
        best = None  # (key, name, model, candidate context)
        for name in self.candidates:
            strategy = STRATEGIES.lookup(name)()
            if not strategy.accepts(backbone):
                report[name] = {"skipped": f"{name} does not run on backbone {backbone!r}"}
                continue
            sub = replace(ctx, notes={}, warnings=[], fit_result=None)  # the candidate's own decisions, training
            try:
                model = strategy.run(sub)
                key = validation_key(model, ctx)
            except MedTransferError as error:
                report[name] = {"skipped": str(error)}
                continue
            report[name] = candidate_report(key, sub)
            if best is None or key > best[0]:
                best = (key, name, model, sub)
        if best is None:
            reasons = "; ".join(f"{name}: {entry['skipped']}" for name, entry in report.items())
            raise MedTransferError(f"strategy 'auto': no candidate could run ({reasons})")
        _, chosen, model, sub = best
        ctx.fit_result = sub.fit_result  # None when the chosen candidate trains no loop (linear-probe)
        ctx.notes["chosen"] = chosen
        ctx.notes["rule"] = ("best validation key: AUC, then balanced accuracy, then log-loss; "
                             "ties to the earlier candidate")
        ctx.notes["candidates"] = report  # each with its own notes (the chosen one's decisions among them)
        ctx.warnings += sub.warnings
        val = ctx.target.val
        if thin := thin_validation(val.y.numpy(), ctx.target.task, ctx.target.classes):
            ctx.warnings.append(f"strategy auto chose {chosen} on {thin}: a validation score over so few examples "
                                "takes only a handful of values, so the choice is close to chance; compare the "
                                "candidates' validation scores in config.json (strategy_notes), and give validation "
                                "more labels before relying on it")
        return model


def validation_key(model: Classifier, ctx: TransferContext) -> tuple:
    """`selection_key` on the budgeted validation split; a model whose probabilities are not finite
    cannot be compared (its AUC would silently fall back to accuracy on garbage) and is refused."""
    val = ctx.target.val
    prob = predict_proba(model, val.x, ctx.target.task, ctx.config.eval_batch_size)
    if not np.isfinite(prob).all():
        raise MedTransferError("it gives non-finite probabilities on the validation split (diverged weights)")
    return selection_key(val.y.numpy(), prob, ctx.target.task)


def candidate_report(key: tuple, sub: TransferContext) -> dict:
    """What config.json keeps of one candidate: its validation key (JSON numbers; undefined -> None), and
    its training when it ran the loop."""
    def number(value: float) -> float | None:
        return float(value) if math.isfinite(value) else None

    entry = {"val_score": number(key[0]), "val_balanced_accuracy": number(key[1]), "val_log_loss": number(-key[2])}
    fit = sub.fit_result
    if fit is not None:
        entry.update(best_epoch=fit.best_epoch, epochs_run=fit.epochs_run, seconds=round(fit.seconds, 3))
    if sub.notes:
        entry["notes"] = sub.notes
    return entry
