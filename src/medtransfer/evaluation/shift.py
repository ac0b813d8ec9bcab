"""When hospitals differ: how far a target dataset has moved from the source, and in which way.

* **Covariate shift** (the inputs differ: scanners, protocols, populations). Two measures on the
  same representation (raw features for tables, the source model's backbone features for images):
  a *domain classifier* (logistic regression, source vs target, out-of-fold predictions from a
  stratified k-fold) whose AUC says how well the two hospitals can be told apart (0.5: not at all),
  and a *kernel MMD two-sample test* (Gaussian kernels around the median distance, permutation
  p-value), which says whether the difference is more than chance.
* **Label shift** (the disease prevalence differs). The target's class prior is estimated without
  target labels from the source model's outputs: BBSE (black-box shift estimation, Lipton et al.
  2018: solve confusion-matrix x target prior = predicted-label frequencies, the confusion matrix
  measured on the source validation split) and EM (Saerens, Latinne & Decaestecker 2002: re-weight
  the posteriors to a prior until it is self-consistent), the EM posteriors first calibrated by a
  temperature fitted on the source validation split (Alexandari et al. 2020). Percentile bootstrap
  CIs resample the target examples.
* **Where**: per feature (standardised mean difference, Kolmogorov-Smirnov, univariate domain AUC)
  for tables; per predicted class (domain AUC, MMD and prior change) for every modality.

Everything here works on numpy arrays; `diagnose` ties it to datasets and a model, `readings`
turns the numbers into sentences. The report is written by `reporting.shift`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .label_shift import (bbse_prior, confusion_given_label, em_prior, fit_temperature,  # noqa: F401 (re-exported)
                          reweight, softmax)
from .metrics import binary_auc, compute_metrics

STRENGTH = ((0.6, "little or no"), (0.7, "mild"), (0.85, "moderate"), (1.01, "strong"))


# ----------------------------------------------------------------------------- covariate shift


def domain_auc(xs: np.ndarray, xt: np.ndarray, seed: int = 0, n_splits: int = 5, n_boot: int = 500) -> dict:
    """AUC of a logistic-regression domain classifier (source = 0, target = 1) from out-of-fold
    predictions of a stratified k-fold, with a bootstrap 95% CI. Also returns the out-of-fold
    scores of each domain (for plots)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.concatenate([xs, xt]).astype(np.float64)
    d = np.r_[np.zeros(len(xs), int), np.ones(len(xt), int)]
    k = min(n_splits, len(xs), len(xt))
    if k < 2:
        return {"auc": float("nan"), "ci": [float("nan")] * 2, "scores_source": np.zeros(0),
                "scores_target": np.zeros(0), "folds": k}
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=3000))
    score = cross_val_predict(clf, x, d, cv=StratifiedKFold(k, shuffle=True, random_state=seed),
                              method="predict_proba")[:, 1]
    auc = compute_metrics(d, np.c_[1 - score, score], "binary", n_boot=n_boot, seed=seed)["auc"]
    return {"auc": auc["value"], "ci": auc["ci"], "scores_source": score[d == 0], "scores_target": score[d == 1],
            "folds": k}


def gaussian_kernel(x: np.ndarray, scales=(0.25, 0.5, 1.0, 2.0, 4.0)) -> tuple[np.ndarray, float]:
    """Mean of Gaussian kernels exp(-|a-b|^2 / (s * m)) with m the median squared distance (the
    median heuristic, widened and narrowed so one bad bandwidth does not hide a shift)."""
    sq = (x ** 2).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0.0)
    off = d2[~np.eye(len(x), dtype=bool)]
    median = float(np.median(off[off > 0])) if np.any(off > 0) else 1.0
    return sum(np.exp(-d2 / (s * median)) for s in scales) / len(scales), median


def mmd_test(xs: np.ndarray, xt: np.ndarray, n_perm: int = 1000, seed: int = 0) -> dict:
    """Kernel two-sample test: (biased) MMD^2 between source and target, p-value by permuting the
    domain labels (p = (1 + #null >= observed) / (1 + n_perm)); features standardised on the pool."""
    x = np.concatenate([xs, xt]).astype(np.float64)
    x = (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1.0)
    kernel, median = gaussian_kernel(x)
    n, m = len(xs), len(xt)
    if n < 2 or m < 2:
        return {"mmd2": float("nan"), "p": float("nan"), "n_perm": 0, "null": np.zeros(0), "median_d2": median}
    a = np.r_[np.full(n, 1.0 / n), np.full(m, -1.0 / m)]
    observed = float(a @ kernel @ a)
    rng = np.random.default_rng(seed)
    null = []
    for start in range(0, n_perm, 100):  # (perms, N) @ (N, N) in chunks
        weights = np.stack([a[rng.permutation(n + m)] for _ in range(min(100, n_perm - start))])
        null.append(((weights @ kernel) * weights).sum(1))
    null = np.concatenate(null) if null else np.zeros(0)
    p = float((1 + np.sum(null >= observed - 1e-12)) / (1 + len(null)))
    return {"mmd2": observed, "p": p, "n_perm": int(len(null)), "null": null, "median_d2": median}


def feature_shift(xs: np.ndarray, xt: np.ndarray, names: list[str]) -> list[dict]:
    """Per feature: source and target means, standardised mean difference (target - source, in
    pooled SDs), Kolmogorov-Smirnov statistic and p-value, and the univariate domain AUC
    (max(AUC, 1 - AUC): 0.5 = the feature does not tell the sites apart). Sorted by that AUC."""
    from scipy.stats import ks_2samp

    d = np.r_[np.zeros(len(xs), int), np.ones(len(xt), int)]
    rows = []
    for j, name in enumerate(names):
        s, t = xs[:, j].astype(float), xt[:, j].astype(float)
        pooled = np.sqrt((s.var() + t.var()) / 2)
        diff = t.mean() - s.mean()
        smd = diff / pooled if pooled > 0 else (0.0 if diff == 0 else float(np.sign(diff) * np.inf))
        ks = ks_2samp(s, t)
        auc = binary_auc(d, np.r_[s, t])
        auc = 0.5 if np.isnan(auc) else max(auc, 1 - auc)
        rows.append({"feature": name, "mean_source": float(s.mean()), "mean_target": float(t.mean()),
                     "smd": float(smd), "ks": float(ks.statistic), "ks_p": float(ks.pvalue), "domain_auc": float(auc)})
    return sorted(rows, key=lambda r: (-r["domain_auc"], -abs(r["smd"]) if np.isfinite(r["smd"]) else -1e9))


# ----------------------------------------------------------------------------- label shift
# The estimators live in `label_shift` (shared with the prior-shift strategies); re-exported here.


def estimate_priors(logits_val: np.ndarray, y_val: np.ndarray, logits_target: np.ndarray,
                    source_prior: np.ndarray, n_boot: int = 200, seed: int = 0) -> dict:
    """EM (on temperature-calibrated posteriors) and BBSE estimates of the target prior, each with a
    95% percentile bootstrap CI over the target examples; plus the naive mean predicted probability."""
    n_classes = logits_val.shape[1]
    temperature = fit_temperature(logits_val, y_val)
    prob_t = softmax(logits_target / temperature)
    pred_val, pred_t = logits_val.argmax(1), logits_target.argmax(1)
    em = em_prior(prob_t, source_prior)
    bbse = bbse_prior(y_val, pred_val, pred_t, n_classes)
    rng = np.random.default_rng(seed)
    boots_em, boots_bbse = [], []
    for _ in range(n_boot):
        idx = rng.integers(0, len(prob_t), len(prob_t))
        boots_em.append(em_prior(prob_t[idx], source_prior, max_iter=300, tol=1e-6))
        boots_bbse.append(bbse_prior(y_val, pred_val, pred_t[idx], n_classes))

    def ci(boots):
        if not boots:
            return [[float("nan")] * 2 for _ in range(n_classes)]
        return np.percentile(np.array(boots), [2.5, 97.5], axis=0).T.tolist()
    return {"source": np.asarray(source_prior, float).tolist(), "em": em.tolist(), "em_ci": ci(boots_em),
            "bbse": bbse.tolist(), "bbse_ci": ci(boots_bbse), "mean_prob": softmax(logits_target).mean(0).tolist(),
            "temperature": temperature, "n_target": int(len(logits_target)), "n_source_val": int(len(y_val))}


# ----------------------------------------------------------------------------- the diagnosis


@dataclass
class ShiftDiagnosis:
    source: str
    target: str
    modality: str
    classes: list[str]
    representation: str  # what the covariate-shift tests looked at
    model: str  # the source model behind the label-shift estimates
    n_source: int
    n_target: int
    domain: dict
    mmd: dict
    label: dict | None = None  # None for multi-label tasks
    features: list[dict] = field(default_factory=list)  # tables only
    per_class: list[dict] = field(default_factory=list)
    missing: list[dict] = field(default_factory=list)  # tables: columns whose missing rate differs (>= 10 points)
    notes: list[str] = field(default_factory=list)
    out: object = field(default=None, repr=False)  # the report folder, once written

    @property
    def significant(self) -> bool:
        """Covariate shift beyond chance: MMD p < 0.05 or the domain AUC's CI above 0.5."""
        return bool(self.mmd["p"] < 0.05 or self.domain["ci"][0] > 0.5)

    def to_dict(self) -> dict:
        out = asdict(self)
        out.pop("out")
        for part in ("domain", "mmd"):  # per-sample arrays stay out of the JSON
            out[part] = {k: v for k, v in out[part].items() if not isinstance(v, np.ndarray)}
        out["significant"] = self.significant
        out["readings"] = readings(self)
        return out


def subsample(n: int, limit: int | None, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(n, size=limit, replace=False)) if limit and n > limit else np.arange(n)


def diagnose(source_name: str, target_name: str, modality: str, classes: list[str],
             rep_source: np.ndarray, rep_target: np.ndarray, representation: str, *,
             feature_names: list[str] | None = None, model: str = "", logits_source_val: np.ndarray | None = None,
             y_source_val: np.ndarray | None = None, logits_source: np.ndarray | None = None,
             logits_target: np.ndarray | None = None, source_prior: np.ndarray | None = None,
             true_target_prior: np.ndarray | None = None, seed: int = 0, n_perm: int = 1000,
             n_boot: int = 200, notes: list[str] | None = None) -> ShiftDiagnosis:
    """All the statistics for one source -> target pair.

    rep_source / rep_target: the representation compared for covariate shift (already subsampled);
    logits_source / logits_target: the source model's logits on those same examples (the target's
    for the prior estimates, both for the per-class view); logits_source_val / y_source_val:
    labelled source validation data (temperature calibration, BBSE's confusion matrix);
    source_prior: the class frequencies the source model was trained on; true_target_prior (when
    the target happens to have labels) is only shown next to the estimates, never used by them."""
    domain = domain_auc(rep_source, rep_target, seed)
    mmd = mmd_test(rep_source, rep_target, n_perm, seed)
    diag = ShiftDiagnosis(source_name, target_name, modality, list(classes), representation, model,
                          len(rep_source), len(rep_target), domain, mmd, notes=list(notes or []))
    if feature_names:
        diag.features = feature_shift(rep_source, rep_target, feature_names)
    if logits_target is not None and logits_source_val is not None and source_prior is not None:
        diag.label = estimate_priors(logits_source_val, y_source_val, logits_target, source_prior, n_boot, seed)
        if true_target_prior is not None:
            diag.label["true"] = np.asarray(true_target_prior, float).tolist()
    if logits_source is not None and logits_target is not None and len(logits_target) == len(rep_target):
        diag.per_class = class_shift(rep_source, rep_target, logits_source.argmax(1), logits_target.argmax(1),
                                     classes, diag.label, seed, min(n_perm, 500))
    return diag


def class_shift(rep_source, rep_target, pred_source, pred_target, classes, label, seed, n_perm) -> list[dict]:
    """Per predicted class: how many examples each site puts there, and how far the two sites'
    examples of that class differ (domain AUC, MMD p-value), plus the class's prior change."""
    rows = []
    for c, name in enumerate(classes):
        s, t = rep_source[pred_source == c], rep_target[pred_target == c]
        row = {"class": name, "n_source": int(len(s)), "n_target": int(len(t)),
               "share_source": float(np.mean(pred_source == c)), "share_target": float(np.mean(pred_target == c))}
        if len(s) >= 10 and len(t) >= 10:
            row["domain_auc"] = domain_auc(s, t, seed, n_boot=0)["auc"]
            row["mmd_p"] = mmd_test(s, t, n_perm, seed)["p"]
        else:
            row["domain_auc"] = row["mmd_p"] = float("nan")
        if label is not None:
            row["prior_source"], row["prior_target_em"] = label["source"][c], label["em"][c]
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- plain language


def strength(auc: float) -> str:
    return next(word for limit, word in STRENGTH if auc < limit)


def pct(value: float) -> str:
    return f"{100 * value:.0f}%"


def readings(diag: ShiftDiagnosis) -> list[str]:
    """The numbers as sentences a clinician or reviewer can act on."""
    lines = []
    d, m = diag.domain, diag.mmd
    verdict = "a significant shift" if diag.significant else "no significant shift"
    lines.append(
        f"Covariate shift: a domain classifier tells {diag.target} from {diag.source} with AUC {d['auc']:.2f} "
        f"(95% CI {d['ci'][0]:.2f}-{d['ci'][1]:.2f}; 0.5 = indistinguishable): {strength(d['auc'])} covariate shift. "
        f"The kernel MMD test gives p = {m['p']:.3g} ({m['n_perm']} permutations): {verdict} in "
        f"{diag.representation}.")
    label = diag.label
    if label is not None:
        k = 1 if len(diag.classes) == 2 else int(np.argmax(np.abs(np.subtract(label["em"], label["source"]))))
        name = diag.classes[k]
        em, bbse, src = label["em"][k], label["bbse"][k], label["source"][k]
        em_ci = label["em_ci"][k]
        line = (f"Label shift: '{name}' is {pct(src)} of the source training data; without target labels the "
                f"target's share is estimated at {pct(em)} by EM (95% CI {pct(em_ci[0])}-{pct(em_ci[1])}) and "
                f"{pct(bbse)} by BBSE")
        if "true" in label:
            line += f" (the target's labels, not used by either estimate, give {pct(label['true'][k])})"
        change = em - src
        if abs(change) >= 0.1:
            line += (f". A {abs(100 * change):.0f}-point {'rise' if change > 0 else 'fall'} in prevalence: the source "
                     f"model's probabilities and its 0.5 threshold are miscalibrated there; the `prior-shift` strategy "
                     f"corrects them without labels.")
        elif abs(change) >= 0.03:
            line += f". A modest change of {100 * change:+.0f} points."
        else:
            line += ". The prevalence looks about the same at both sites."
        if d["auc"] >= 0.85:
            line += (" Caution: both estimates assume that only the prevalence changed, and with covariate shift "
                     "this strong that holds only roughly; check them on a few labelled target patients.")
        if abs(em - bbse) > 0.15:
            line += (" EM and BBSE disagree by more than 15 points: the source model's outputs are not reliable "
                     "enough at the target (strong covariate shift breaks the label-shift assumption) -- treat "
                     "both as rough.")
        lines.append(line)
    if diag.missing:
        lines.append("Recording differs: " + "; ".join(
            f"{m['column']} is missing for {pct(m['target'])} of the target's rows ({pct(m['source'])} at the source)"
            for m in diag.missing[:5]) + ". Missing values are imputed with the source's median or coded as a "
                     "'missing' level, so such columns look shifted whatever the patients are like.")
    if diag.features:
        top = [f for f in diag.features[:5] if f["domain_auc"] >= 0.6]
        if top:
            lines.append("The features that differ most: " + "; ".join(
                f"{f['feature']} (SMD {f['smd']:+.2f}, univariate AUC {f['domain_auc']:.2f})" for f in top) + ".")
        else:
            lines.append("No single feature separates the sites well (every univariate AUC < 0.6).")
    shifted = [r for r in diag.per_class if np.isfinite(r.get("domain_auc", np.nan))]
    if shifted:
        worst = max(shifted, key=lambda r: r["domain_auc"])
        lines.append(f"Per predicted class the sites differ most among examples predicted '{worst['class']}' "
                     f"(domain AUC {worst['domain_auc']:.2f}); the source predicts it for {pct(worst['share_source'])} "
                     f"of its examples, the target for {pct(worst['share_target'])}.")
    advice = []
    if diag.significant and d["auc"] >= 0.7:
        advice.append("feature alignment (`dann`, `coral`, `mmd`) with the unlabelled target data, and a few "
                      "labelled target examples to check the result")
    if label is not None and np.abs(np.subtract(label["em"], label["source"])).max() >= 0.1:
        advice.append("`prior-shift` to move the predicted probabilities to the target's prevalence")
    if advice:
        lines.append("What to try: " + "; ".join(advice) + ".")
    return lines
