"""The shift pipeline: how far a target hospital has moved from the source, without target labels.
Both datasets loaded (encoded alike) -> the representation to compare (raw features for tables, the
source model's features for images) -> the label-shift model (the source model, or a logistic
regression for tables) -> `evaluation.shift.diagnose` -> the report folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data import TaskDataset
from ..data.tabular import TabularEncoder
from ..errors import MedTransferError
from ..evaluation.shift import ShiftDiagnosis, diagnose, subsample
from ..models.checkpoint import load_checkpoint
from ..models.inference import features_and_logits
from ..models.logistic import fit_logistic
from ..models.sources import check_compatible
from ..runs import commit_dir, staging_dir
from .request import ShiftRequest
from .run_folder import SELF_SUPERVISED_TASK, output_dir


def shift(request: ShiftRequest, write_report=None) -> ShiftDiagnosis:
    """Diagnose the shift; `write_report(diagnosis, folder)` writes the report files when saving."""
    source, target = request.source, request.target
    out = output_dir(request.output, source, "to", target, root="shift")
    notes, source_model, meta = [], None, {}
    if request.model is not None:
        source_model, meta = load_checkpoint(Path(request.model))
    encoder = TabularEncoder.from_dict(meta["encoder"]) if meta.get("encoder") else None
    src = request.loading.load(source, encoder=encoder)
    tgt = request.loading.load(target, encoder=encoder or src.encoder)
    if src.modality != tgt.modality:
        raise MedTransferError(f"{source} is {src.modality} but {target} is {tgt.modality}: compare like with like")
    missing = missing_rates(src, tgt) if src.modality == "tabular" else []
    if source_model is not None:
        check_compatible(source_model, src.modality, src.in_channels, src.info.get("features"),
                         rate=src.info.get("rate"))
        trained_on = (meta.get("provenance") or {}).get("data")
        description = f"run {request.model}" + (f" (trained on {trained_on})" if trained_on else "")
        if trained_on and trained_on != source:
            notes.append(f"The model was trained on {trained_on}, not on {source}: the source prior below is "
                         f"{source}'s training prior, which need not be the one the model learned.")
        logit_fn = lambda x: features_and_logits(source_model, x, request.accelerator)[1]  # noqa: E731
    elif src.modality == "tabular":
        keep, dropped = recorded_columns(src, tgt)
        logit_fn = source_logistic_logits(src, keep, request.seed)
        description = "logistic regression fitted on the source training split (no --model given)"
        notes.append("No --model given: the label-shift estimates use a logistic regression fitted on the source "
                     "training split, C chosen by the source validation log-loss"
                     + (f", without the columns mostly missing at the target ({', '.join(dropped)}): imputed "
                        "values there would be read as a change in disease" if dropped else "") + ".")
    else:
        raise MedTransferError(f"{source} holds images: shift needs the source model for their features and for the "
                               "prior estimates; pass --model RUN (e.g. a run from `medtransfer pretrain --data "
                               f"{source} --out runs/src`)")

    max_samples = request.max_samples
    rng = np.random.default_rng(request.seed)
    xs = torch.cat([src.train.x, src.val.x, src.test.x])
    xt = torch.cat([tgt.train.x, tgt.val.x, tgt.test.x])
    yt = torch.cat([tgt.train.y, tgt.val.y, tgt.test.y]).numpy()
    idx_s, idx_t = subsample(len(xs), max_samples, rng), subsample(len(xt), max_samples, rng)
    if max_samples and (len(xs) > max_samples or len(xt) > max_samples):
        notes.append(f"Covariate tests and prior estimates use a seeded random subsample of at most {max_samples} "
                     "examples per site (--max-samples).")
    if src.modality == "tabular":
        rep_s, rep_t = xs[idx_s].numpy(), xt[idx_t].numpy()
        representation = f"the {rep_s.shape[1]} encoded input features (encoded as at the source)"
    else:
        rep_s, rep_t = (features_and_logits(source_model, x[i], request.accelerator)[0]
                        for x, i in ((xs, idx_s), (xt, idx_t)))
        representation = f"the source model's {rep_s.shape[1]}-d backbone features"

    label_ok = meta.get("task") != SELF_SUPERVISED_TASK and src.task != "multilabel"
    model_classes = meta.get("classes", src.classes)
    if label_ok and (model_classes != src.classes or tgt.classes != src.classes):
        notes.append(f"Label shift not estimated: the model predicts {model_classes}, {source} has {src.classes}, "
                     f"{target} has {tgt.classes}.")
        label_ok = False
    elif not label_ok:
        notes.append("Label shift not estimated: it needs a single-label classifier trained on the source.")
    label_args = {}
    if label_ok:
        k = src.num_classes
        label_args = dict(logits_source_val=logit_fn(src.val.x), y_source_val=src.val.y.numpy(),
                          logits_source=logit_fn(xs[idx_s]), logits_target=logit_fn(xt[idx_t]),
                          source_prior=np.bincount(src.train.y.numpy(), minlength=k) / len(src.train),
                          true_target_prior=np.bincount(yt[idx_t], minlength=k) / len(idx_t))
    diag = diagnose(source, target, src.modality, src.classes, rep_s, rep_t, representation,
                    feature_names=src.info.get("features") if src.modality == "tabular" else None,
                    model=description, seed=request.seed, n_perm=request.n_perm, n_boot=request.n_boot,
                    notes=notes, **label_args)
    diag.missing = missing
    if out is not None:
        stage = staging_dir(out)
        write_report(diag, stage)
        commit_dir(stage, out)
        diag.out = out
    return diag


def missing_rates(src: TaskDataset, tgt: TaskDataset) -> list[dict]:
    """Columns whose share of missing values differs by at least 10 points between the sites."""
    rates_s, rates_t = src.info.get("missing", {}), tgt.info.get("missing", {})
    return sorted(({"column": c, "source": rates_s.get(c, 0.0), "target": r} for c, r in rates_t.items()
                   if abs(r - rates_s.get(c, 0.0)) >= 0.1), key=lambda m: -abs(m["target"] - m["source"]))


def recorded_columns(source: TaskDataset, target: TaskDataset, limit: float = 0.5) -> tuple[list[int], list[str]]:
    """Tables: indices of the encoded features whose column is recorded at the target (missing for at
    most `limit` of its rows, or as often as at the source), and the names of the columns that are not.
    A column mostly missing at one hospital was not measured there: imputed values carry no signal."""
    missing_s, missing_t = source.info.get("missing", {}), target.info.get("missing", {})
    dropped = [c for c, rate in missing_t.items() if rate > limit and missing_s.get(c, 0.0) <= limit]
    names = source.info.get("features") or []
    keep = [j for j, n in enumerate(names) if not any(n == c or n.startswith(c + "=") for c in dropped)]
    return keep, dropped


def source_logistic_logits(source: TaskDataset, keep: list[int], seed: int = 0):
    """A logistic regression on the source training rows (features `keep`), C chosen by the source
    validation log-loss (a probability model: calibration matters for prior estimates). Returns a
    function x -> logits (binary: [-z/2, z/2], so softmax = sigmoid(z))."""
    fitted = fit_logistic(source.train.x.numpy()[:, keep], source.train.y.numpy(), source.val.x.numpy()[:, keep],
                          source.val.y.numpy(), source.task, source.num_classes, seed, criterion="log_loss",
                          max_iter=5000)
    return lambda x: fitted.logits(x.numpy()[:, keep])
