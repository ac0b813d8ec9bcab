"""model_card.md of a run folder: what the model is for, the data it rests on, its operating point, its
test performance with CIs, calibration, limits and provenance. Written only from config.json and
metrics.json (dicts in, Markdown out), so the card never claims more than the run recorded: a block an
older run lacks reads "not recorded", and an undefined number (nan / null) reads "n/a"."""

from __future__ import annotations

import math

from ..strategies import STRATEGIES

NOT_RECORDED = "not recorded"
# The headline rows of the performance table, in reading order, with their display names.
HEADLINE = {"auc": "AUC", "sensitivity": "sensitivity", "specificity": "specificity", "ppv": "PPV",
            "npv": "NPV", "f1": "F1", "balanced_acc": "balanced accuracy", "brier": "Brier score",
            "ece": "ECE", "cal_slope": "calibration slope", "cal_intercept": "calibration intercept"}
OTHER_NAMES = {"acc": "accuracy", "log_loss": "log loss"}
PER_CLASS = ("sensitivity", "specificity", "ppv", "npv")  # the one-vs-rest rows of a multiclass run
CALIBRATION_ROWS = {"ece": "ECE", "brier": "Brier score", "cal_slope": "calibration slope",
                    "cal_intercept": "calibration intercept"}
STRATA = ("sex", "gender", "age", "site", "hospital", "centre", "center", "scanner", "ethnicity", "race")
RUN_FILES = {"model.json": "architecture, classes, input spec and provenance of the checkpoint",
             "model.safetensors": "the weights (absent when the run was saved without them)",
             "config.json": "the resolved settings of the run", "metrics.json": "validation and test metrics with CIs",
             "predictions.csv": "per-example validation and test probabilities (and decisions, where recorded)",
             "log.txt": "the training log", "model_card.md": "this card"}


def model_card(config: dict, metrics: dict) -> str:
    """The Markdown text of model_card.md for a run with this config.json and metrics.json."""
    sections = [title, intended_use, data_and_cohort, operating_point, performance, calibration, subgroups,
                limitations, provenance]
    return "\n\n".join(section(config, metrics) for section in sections) + "\n"


# --- formatting helpers -------------------------------------------------------------------------------

def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def fmt(value, digits: int = 3) -> str:
    """A number for the card; nan, None and non-numbers read "n/a" (an undefined metric, a null in JSON)."""
    if isinstance(value, dict):  # a metric entry {"value": v, "ci": [lo, hi]}
        value = value.get("value")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return f"{value:.{digits}f}" if is_number(value) else "n/a"


def fmt_ci(entry) -> str:
    """"[lo, hi]" of a metric entry; "n/a" when there is no CI or either end is undefined."""
    ci = entry.get("ci") if isinstance(entry, dict) else None
    if not isinstance(ci, (list, tuple)) or len(ci) != 2 or not all(is_number(v) for v in ci):
        return "n/a"
    return f"[{fmt(ci[0])}, {fmt(ci[1])}]"


def text(value, missing: str = NOT_RECORDED) -> str:
    """A recorded setting as text, or `missing` when it is absent (None, empty)."""
    if value is None or value == "" or value == [] or value == {}:
        return missing
    if isinstance(value, float):
        return fmt(value, 4)
    if isinstance(value, dict):
        return ", ".join(f"{k}={text(v, 'n/a')}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(text(v, "n/a") for v in value)
    return str(value)


def block(metrics: dict, name: str) -> dict:
    """metrics[name] when it is a dict (a block older runs lack reads as empty)."""
    value = metrics.get(name)
    return value if isinstance(value, dict) else {}


def value_of(entry):
    """The number of a metric entry, whether stored as {"value": v, "ci": ...} or as a bare number."""
    return entry.get("value") if isinstance(entry, dict) else entry


def bullets(lines) -> str:
    return "\n".join(f"- {line}" for line in lines)


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in rows)])


def classes_of(config: dict) -> list[str]:
    return [str(c) for c in config.get("classes") or []]


def strategy_line(name) -> str:
    """The strategy and what it does, from its registered summary (one no longer registered: its name)."""
    strategy = STRATEGIES.get(name) if isinstance(name, str) else None
    summary = getattr(strategy, "summary", "")
    return f"{text(name)}: {summary}" if summary else f"{text(name)} (what it does: {NOT_RECORDED})"


# --- sections -----------------------------------------------------------------------------------------

def title(config: dict, metrics: dict) -> str:
    versions = config.get("versions") or {}
    date = versions.get("date") or config.get("date") or config.get("created")
    return (f"# Model card: {text(config.get('strategy'))} on {text(config.get('data'))}\n\n"
            f"medtransfer {text(versions.get('medtransfer'))}; date: {text(date)}.")


def intended_use(config: dict, metrics: dict) -> str:
    task, classes = config.get("task"), classes_of(config)
    modality = (config.get("input") or {}).get("modality")
    kind = {"binary": "binary", "multiclass": "multiclass", "multilabel": "multilabel"}.get(task, text(task))
    labels = " / ".join(classes) if classes else NOT_RECORDED
    return ("## Intended use\n\n"
            f"A research model for {kind} classification of {labels} from {text(modality)} data "
            f"({text(config.get('data'))}). It is not a medical device. It has been validated only on the data "
            "named below, and any decision it informs needs clinical review.")


def data_and_cohort(config: dict, metrics: dict) -> str:
    counts = block(metrics, "test_counts")
    n_test = counts.get("n", config.get("n_test"))
    lines = [f"Target dataset: {text(config.get('data'))}" + where_from(config),
             f"Label budget: {text(config.get('budget'))}, giving {text(config.get('n_train_labels'))} labelled "
             f"training and {text(config.get('n_val_labels'))} labelled validation examples",
             f"Test split: n = {text(n_test)}; per class: {class_counts(counts.get('per_class'))}",
             f"Prevalence of the positive class in the test split: {prevalence(config, metrics)}",
             f"Split seed: {text(config.get('split_seed'))}",
             *unlabelled_line(config.get("unlabelled")),
             f"Source: {text(config.get('source_description') or config.get('source'), 'none')}",
             f"Strategy: {strategy_line(config.get('strategy'))}"]
    return "## Data and cohort\n\n" + bullets(lines)


def unlabelled_line(record: dict | None) -> list[str]:
    """--unlabelled: what the run learned from without labels, and what it left out."""
    if not record:
        return []
    return [f"Unlabelled target images (--unlabelled {record['spec']}): {record['images']} used; left out as "
            f"identical to validation or test inputs: {record['held_out_duplicates']}, to training inputs: "
            f"{record['training_duplicates']}"]


def where_from(config: dict) -> str:
    """The data root, label column and grouping of the target, where the run recorded them."""
    parts = [f"{label} {config[key]}" for key, label in (("data_root", "from"), ("target", "label column"),
                                                          ("group", "split grouped by")) if config.get(key)]
    return f" ({'; '.join(parts)})" if parts else ""


def class_counts(per_class) -> str:
    """"a 70 (58.3%), b 50 (41.7%)" from {"a": 70, "b": 50}."""
    if not isinstance(per_class, dict) or not per_class:
        return NOT_RECORDED
    total = sum(v for v in per_class.values() if is_number(v))
    share = (lambda v: f" ({100 * v / total:.1f}%)") if total else (lambda v: "")
    return ", ".join(f"{name} {fmt(v)}{share(v) if is_number(v) else ''}" for name, v in per_class.items())


def prevalence(config: dict, metrics: dict) -> str:
    if config.get("task") != "binary":
        return "not applicable (not a binary task)"
    entry = block(metrics, "test").get("prevalence")
    return NOT_RECORDED if entry is None else fmt(entry)


def positive_name(config: dict, metrics: dict) -> str | None:
    return block(metrics, "operating_point").get("positive") or config.get("positive")


def operating_point(config: dict, metrics: dict) -> str:
    op, task = block(metrics, "operating_point"), config.get("task")
    if task == "binary":
        threshold = fmt(op["threshold"], 4) if "threshold" in op else NOT_RECORDED
        lines = [f"Positive class: {positive_line(config, metrics)}",
                 f"Threshold rule: {text(op.get('rule'))}; threshold: {threshold}",
                 f"Chosen on: {chosen_on(op)}", f"Validation examples it rests on: {val_counts(op)}"]
    elif task == "multiclass":
        lines = [f"Decision rule: {decision_rule(op.get('rule'))}"]
    else:
        lines = [f"Decision rule: each label is predicted present when its probability reaches the threshold; "
                 f"threshold: {text(op.get('threshold', op.get('rule')))}"]
    if op.get("class_weights") is not None:
        lines.append(f"Class weights in training: {text(op['class_weights'])}")
    lines.append("Warnings: " + ("; ".join(str(w) for w in op.get("warnings") or []) or "none"))
    return "## Positive class and operating point\n\n" + bullets(lines)


def positive_line(config: dict, metrics: dict) -> str:
    name = positive_name(config, metrics)
    if name:
        return str(name)
    classes = classes_of(config)
    older = f" (runs that predate this record scored the second class, {classes[1]!r}, as positive)" \
        if len(classes) == 2 else ""
    return NOT_RECORDED + older


def chosen_on(op: dict) -> str:
    where = op.get("chosen_on")
    if where is None:
        return NOT_RECORDED
    return {"val": "the validation split", "fixed": "fixed in advance (not fitted to data)"}.get(where, str(where))


def val_counts(op: dict) -> str:
    if not any(k in op for k in ("n_val", "n_val_positive", "n_val_negative")):
        return NOT_RECORDED
    return (f"{text(op.get('n_val'), 'n/a')} ({text(op.get('n_val_positive'), 'n/a')} positive, "
            f"{text(op.get('n_val_negative'), 'n/a')} negative)")


def decision_rule(rule) -> str:
    return {"argmax": "argmax (the most probable class)",
            "prior": "prior-corrected argmax (argmax of p_k / pi_k, pi the labelled training prior)"}.get(
        rule, text(rule))


def performance(config: dict, metrics: dict) -> str:
    test = block(metrics, "test")
    head = "## Performance on the test split (touched once)\n\n"
    if not test:
        return head + "No test metrics recorded."
    rows = [[label, fmt(test[key]), fmt_ci(test[key])] for key, label in metric_rows(test, classes_of(config))]
    return (head + "The test split was scored once, after model selection on validation, with decisions at the "
            "operating point above. 95% CIs are percentile bootstraps over test examples."
            + averaging_note(config.get("task")) + "\n\n" + table(["metric", "value", "95% CI"], rows))


def averaging_note(task) -> str:
    """How the single numbers of a multi-class or multi-label run summarise their classes."""
    if task == "multiclass":
        return (" AUC, sensitivity, specificity and F1 are macro means over the classes (one-vs-rest); the rows "
                "\"<metric>, <class> vs rest\" give each class.")
    if task == "multilabel":
        return " Each label is scored on its own and the single numbers are means over the labels."
    return ""


def metric_rows(test: dict, classes: list[str]) -> list[tuple[str, str]]:
    """(key, label) of every test metric to show: the headline ones, the per-class one-vs-rest rows
    (multiclass), then any other recorded metric (prevalence is in the data section)."""
    rows = [(k, label) for k, label in HEADLINE.items() if k in test]
    rows += [(f"{m}[{c}]", f"{HEADLINE[m]}, {c} vs rest") for c in classes for m in PER_CLASS if f"{m}[{c}]" in test]
    shown = {k for k, _ in rows} | {"prevalence"}
    return rows + [(k, other_label(k, classes)) for k in test if k not in shown]


def other_label(key: str, classes: list[str]) -> str:
    """Display name of a metric outside the headline list (auc_2 of a multilabel run: "AUC, <class 2>")."""
    if key.startswith("auc_") and key[4:].isdigit() and int(key[4:]) < len(classes):
        return f"AUC, {classes[int(key[4:])]}"
    return OTHER_NAMES.get(key, key)


def calibration(config: dict, metrics: dict) -> str:
    cal = block(metrics, "calibration")
    method = cal.get("method")
    head = "## Calibration\n\n"
    if not cal:
        return head + ("Calibration: not recorded. The probabilities as scored (no recalibration recorded):\n\n"
                       + calibration_table(config, metrics, {}))
    params = text(cal.get("params"), "none")
    line = f"Method: {text(method)} (fitted on the validation split; parameters: {params})."
    if method in (None, "none"):
        line = "Method: none (the probabilities are the model's own)."
    return head + line + "\n\n" + calibration_table(config, metrics, cal)


def calibration_table(config: dict, metrics: dict, cal: dict) -> str:
    """ECE, Brier, slope, intercept before and after calibration, on validation and on test (test after
    calibration is the test block itself); without a calibration block, the scored val and test values."""
    val, test = block(metrics, "val"), block(metrics, "test")
    if not cal:
        rows = [[label, fmt(val.get(k)), fmt(test.get(k))] for k, label in CALIBRATION_ROWS.items()]
        return table(["metric", "validation", "test"], rows)
    columns = [cal.get("val_before") or {}, cal.get("val_after") or {}, cal.get("test_before") or {}, test]
    rows = [[label, *(fmt(value_of(c.get(k))) for c in columns)] for k, label in CALIBRATION_ROWS.items()]
    return table(["metric", "validation before", "validation after", "test before", "test after"], rows)


def subgroups(config: dict, metrics: dict) -> str:
    lines = ["No subgroup analysis was run by this command: every number above is for the whole test split. "
             "Before any use, check performance within sex, age and site strata (and any group the intended "
             "population differs in) where the data hold them."]
    spec = config.get("input") or {}
    if spec.get("modality") == "tabular":
        features = base_features(spec.get("features") or [])
        strata = [f for f in features if any(s in f.lower() for s in STRATA)]
        lines.append(f"The target's features: {', '.join(features) if features else NOT_RECORDED}."
                     + (f" Of these, {', '.join(strata)} can define strata to check." if strata else ""))
    else:
        kind = "signals" if spec.get("modality") == "signal" else "images"
        lines.append(f"The inputs are {kind}: no subgroup attributes are recorded with them; strata need the "
                     "cohort's metadata (e.g. patient sex and age, acquisition site or device).")
    return "## Subgroups\n\n" + "\n\n".join(lines)


def base_features(features: list) -> list[str]:
    """Feature names before one-hot encoding ("sex=Female", "sex=Male" -> "sex"), in order, once each."""
    return list(dict.fromkeys(str(f).split("=", 1)[0] for f in features))


def limitations(config: dict, metrics: dict) -> str:
    lines = [test_size_note(config, metrics), budget_note(config),
             *(f"Warning: {w}" for w in metrics.get("warnings") or []), degenerate_note(metrics)]
    return "## Limitations\n\n" + bullets(line for line in lines if line)


def test_size_note(config: dict, metrics: dict) -> str:
    """The test size and the widest headline CI: how much the numbers above can move."""
    counts = block(metrics, "test_counts")
    n = counts.get("n", config.get("n_test"))
    per_class = [v for v in (counts.get("per_class") or {}).values() if is_number(v)]
    fewest = f" (fewest in one class: {min(per_class)})" if per_class else ""
    test = block(metrics, "test")
    widths = {label: ci[1] - ci[0] for key, label in HEADLINE.items()
              if isinstance(ci := (test.get(key) or {}).get("ci"), (list, tuple)) and len(ci) == 2
              and all(is_number(v) for v in ci)}
    widest = ""
    if widths:
        label = max(widths, key=widths.get)
        widest = f"; the widest 95% CI, for {label}, spans {fmt(widths[label])}"
    return f"Test split of {text(n)} examples{fewest}{widest}. Small test sets leave wide intervals."


def budget_note(config: dict) -> str:
    return (f"Trained on {text(config.get('n_train_labels'))} labelled target examples (budget "
            f"{text(config.get('budget'))}) and selected on {text(config.get('n_val_labels'))} validation "
            f"examples; another draw of these labels (seed {text(config.get('seed'))}) can change the results "
            "by more than the CIs show, which cover only test sampling.")


def degenerate_note(metrics: dict) -> str:
    predicted = metrics.get("predicted_counts")
    if not isinstance(predicted, dict) or not predicted:
        return "Predicted class counts on test: not recorded."
    used = [name for name, v in predicted.items() if is_number(v) and v > 0]
    if len(used) != 1:
        return ""
    return (f"Degenerate predictions: every test decision fell in one class ({used[0]}) at this operating "
            "point, so sensitivity / specificity are trivially 0 or 1; the model does not separate the classes "
            "at this operating point.")


def privacy_line(dp: dict) -> str:
    """A --dp run's guarantee as its accountant gave it, and what it does not cover."""
    replaced = dp.get("replaced_modules") or {}
    swapped = f"; made Opacus-compatible: {text(replaced)}" if replaced else ""
    delta, target, clip = (f"{dp[k]:.3g}" if is_number(dp.get(k)) else "n/a"
                           for k in ("delta", "epsilon_target", "clip"))
    return (f"Differential privacy: DP-SGD (Opacus), ({fmt(dp.get('epsilon_spent'))}, {delta})-DP "
            f"spent of target epsilon {target} ({text(dp.get('accountant'))} accountant) "
            f"after {text(dp.get('steps'))} steps; noise multiplier {fmt(dp.get('noise_multiplier'))}, clip "
            f"{clip}, Poisson sample rate {fmt(dp.get('sample_rate'))}; it covers the "
            f"{text(dp.get('n_private'))} labelled training examples, not the validation split (epoch, threshold "
            f"and calibration were chosen on it) nor the source model{swapped}")


def provenance(config: dict, metrics: dict) -> str:
    fit, versions = block(metrics, "fit"), config.get("versions") or {}
    train = config.get("train") or {}
    lines = [f"Data: {text(config.get('data'))}", f"Source: {text(config.get('source'), 'none')}",
             f"Strategy: {text(config.get('strategy'))}", f"Backbone: {text(config.get('backbone'))}",
             f"Seed: {text(config.get('seed'))}; split seed: {text(config.get('split_seed'))}",
             f"Epochs: {text(fit.get('epochs_run'))} run of {text(train.get('epochs'))} planned; best epoch "
             f"{text(fit.get('best_epoch'))} (validation score {fmt(fit.get('val_score'), 4)})",
             *(f"{key.replace('_', ' ').capitalize()}: {text(config[key])}" for key in
               ("positive", "threshold", "calibrate", "class_weight", "sampler", "id_column", "drop")
               if key in config),
             f"Strategy notes: {text(config.get('strategy_notes'), 'none')}",
             *([privacy_line(block(metrics, "dp"))] if block(metrics, "dp") else []),
             f"Versions: {text(versions)}"]
    files = bullets(f"`{name}`: {what}" for name, what in RUN_FILES.items())
    return "## Provenance\n\n" + bullets(lines) + "\n\nThe run folder holds:\n\n" + files
