"""model_card.md is written from config.json and metrics.json alone: these check that every recorded
fact reaches the card, that a block an older run lacks reads "not recorded" instead of failing, and that
an undefined number reads "n/a" (never "nan", never an invented value)."""

from __future__ import annotations

import copy
import re

from medtransfer.pipeline.model_card import model_card


def entry(value, lo=None, hi=None):
    return {"value": value, "ci": [lo, hi] if lo is not None else [None, None]}


def section(card: str, heading: str) -> str:
    """The text of one `## heading` section of the card."""
    start = card.index(f"## {heading}")
    end = card.find("\n## ", start + 1)
    return card[start:] if end < 0 else card[start:end]


BINARY_CONFIG = {
    "data": "heart:hungary", "strategy": "head", "source": "heart:cleveland",
    "source_description": "pretrained on heart:cleveland", "budget": "40", "n_train_labels": 40,
    "n_val_labels": 30, "n_test": 120, "seed": 3, "split_seed": 7, "backbone": "mlp",
    "input": {"modality": "tabular", "features": ["age", "chol", "sex=Female", "sex=Male", "cp=asymptomatic"]},
    "train": {"epochs": 100}, "classes": ["no disease", "disease"], "task": "binary", "strategy_notes": {},
    "positive": "disease", "threshold": "sens=0.90", "calibrate": "temperature",
    "versions": {"medtransfer": "0.2.0", "torch": "2.4.0", "date": "2025-05-01"},
}
BINARY_METRICS = {
    "val": {"auc": entry(0.91, 0.8, 0.99), "ece": entry(0.12), "brier": entry(0.15)},
    "test": {"auc": entry(0.8766, 0.8012, 0.9344), "sensitivity": entry(0.92, 0.85, 0.97),
             "specificity": entry(0.41, 0.3, 0.52), "ppv": entry(0.52, 0.42, 0.61), "npv": entry(0.88, 0.76, 0.97),
             "f1": entry(0.66, 0.57, 0.74), "balanced_acc": entry(0.665, 0.6, 0.73), "brier": entry(0.181, 0.15, 0.21),
             "ece": entry(0.044, 0.03, 0.09), "cal_slope": entry(0.97, 0.7, 1.25),
             "cal_intercept": entry(-0.05, -0.3, 0.2), "prevalence": entry(0.4167), "log_loss": entry(0.55, 0.5, 0.6)},
    "fit": {"best_epoch": 12, "epochs_run": 32, "val_score": 0.91},
    "operating_point": {"rule": "sens=0.90", "threshold": 0.31, "positive": "disease", "chosen_on": "val",
                        "n_val": 30, "n_val_positive": 12, "n_val_negative": 18, "class_weights": None,
                        "warnings": ["the threshold rests on only 12 validation positives"]},
    "calibration": {"method": "temperature", "params": {"temperature": 1.7},
                    "val_before": {"ece": 0.123, "brier": 0.211, "cal_slope": 0.61, "cal_intercept": 0.33},
                    "val_after": {"ece": 0.051, "brier": 0.187, "cal_slope": 1.02, "cal_intercept": 0.01},
                    "test_before": {"ece": 0.139, "brier": 0.205, "cal_slope": 0.58, "cal_intercept": 0.29}},
    "test_counts": {"n": 120, "per_class": {"no disease": 70, "disease": 50}},
    "predicted_counts": {"no disease": 0, "disease": 120},
    "warnings": ["the selected model is from epoch 0"],
}

MULTICLASS_CONFIG = {
    "data": "medmnist:bloodmnist", "strategy": "full", "source": "imagenet:resnet18", "budget": "100",
    "n_train_labels": 100, "n_val_labels": 50, "n_test": 300, "seed": 0, "split_seed": 0, "backbone": "resnet18",
    "input": {"modality": "image", "channels": 3, "size": 64}, "train": {"epochs": 30},
    "classes": ["basophil", "eosinophil", "neutrophil"], "task": "multiclass",
    "versions": {"medtransfer": "0.2.0"},
}
MULTICLASS_METRICS = {
    "val": {"auc": entry(0.9)},
    "test": {"auc": entry(0.93, 0.9, 0.95), "balanced_acc": entry(0.71, 0.65, 0.77),
             **{f"{m}[{c}]": entry(0.5 + i / 10, 0.4, 0.8) for i, c in enumerate(MULTICLASS_CONFIG["classes"])
                for m in ("sensitivity", "specificity", "ppv", "npv")}},
    "fit": {"best_epoch": 5, "epochs_run": 15, "val_score": 0.9},
    "operating_point": {"rule": "argmax"},
    "test_counts": {"n": 300, "per_class": {"basophil": 100, "eosinophil": 100, "neutrophil": 100}},
    "predicted_counts": {"basophil": 90, "eosinophil": 110, "neutrophil": 100},
}

# /tmp/mc-run of `medtransfer transfer --data heart:hungary --source heart:cleveland --strategy head --budget 20`,
# as written before operating points, calibration and counts were recorded.
OLD_CONFIG = {
    "data": "heart:hungary", "strategy": "head", "source": "heart:cleveland",
    "source_description": "pretrained on heart:cleveland (/root/.cache/medtransfer/sources/f663dadd345225ee)",
    "budget": "20", "n_train_labels": 20, "n_val_labels": 20, "n_test": 147, "seed": 0, "split_seed": 0,
    "backbone": "mlp",
    "architecture": {"kind": "mlp", "name": "mlp", "in_features": 32, "hidden": [32], "dropout": 0.1, "skip": True},
    "input": {"modality": "tabular", "channels": 0, "size": None, "mean": [0.0], "std": [1.0],
              "features": ["age", "trestbps", "chol", "thalch", "oldpeak", "ca", "sex=Female", "sex=Male",
                           "sex=<missing>", "cp=asymptomatic", "cp=atypical angina", "cp=non-anginal",
                           "cp=typical angina", "cp=<missing>", "fbs=False", "fbs=True", "fbs=<missing>",
                           "restecg=lv hypertrophy", "restecg=normal", "restecg=st-t abnormality",
                           "restecg=<missing>", "exang=False", "exang=True", "exang=<missing>",
                           "slope=downsloping", "slope=flat", "slope=upsloping", "slope=<missing>",
                           "thal=fixed defect", "thal=normal", "thal=reversable defect", "thal=<missing>"]},
    "train": {"epochs": 100, "batch_size": 32, "lr": 0.003, "weight_decay": 0.0001, "warmup_epochs": 0.0,
              "patience": 20, "augment": False, "min_steps_per_epoch": 1, "seed": 0, "accelerator": "auto",
              "progress": False, "eval_batch_size": 512},
    "target": None, "group": None, "data_root": None, "classes": ["no disease", "disease"], "task": "binary",
    "strategy_notes": {},
    "versions": {"medtransfer": "0.1.0", "torch": "2.14.1+cu130", "timm": "1.0.31", "python": "3.11.7",
                 "device": "cpu"},
}
OLD_METRICS = {
    "val": {"acc": {"value": 0.95, "ci": [0.85, 1.0]},
            "balanced_acc": {"value": 0.9285714285714286, "ci": [0.75, 1.0]},
            "auc": {"value": 0.9560439560439561, "ci": [0.8351648351648352, 1.0]},
            "sensitivity": {"value": 0.8571428571428571, "ci": [0.5, 1.0]},
            "specificity": {"value": 1.0, "ci": [1.0, 1.0]},
            "ppv": {"value": 1.0, "ci": [1.0, 1.0]},
            "npv": {"value": 0.9285714285714286, "ci": [0.75, 1.0]},
            "f1": {"value": 0.9230769230769231, "ci": [0.6666666666666666, 1.0]},
            "brier": {"value": 0.10462324648502426, "ci": [0.040203017143230366, 0.19655486684039655]},
            "ece": {"value": 0.19231573008000852, "ci": [0.12037527904380113, 0.31270575453294436]}},
    "test": {"acc": {"value": 0.7482993197278912, "ci": [0.6802721088435374, 0.8163265306122449]},
             "balanced_acc": {"value": 0.6591730228823766, "ci": [0.5974250193498452, 0.7255287984111222]},
             "auc": {"value": 0.9144921718185468, "ci": [0.8578516486706141, 0.9588754154130127]},
             "sensitivity": {"value": 0.33962264150943394, "ci": [0.22026529108327192, 0.46774193548387094]},
             "specificity": {"value": 0.9787234042553191, "ci": [0.9425287356321839, 1.0]},
             "ppv": {"value": 0.9, "ci": [0.75, 1.0]},
             "npv": {"value": 0.7244094488188977, "ci": [0.6461417322834646, 0.7952755905511811]},
             "f1": {"value": 0.4931506849315068, "ci": [0.34480064655172415, 0.6237271667314418]},
             "brier": {"value": 0.15528252840931311, "ci": [0.11786677379128342, 0.19605336688761785]},
             "ece": {"value": 0.16261635054232312, "ci": [0.11826468483880669, 0.22215250759531244]}},
    "fit": {"best_epoch": 17, "epochs_run": 37, "val_score": 0.9560439560439561, "seconds": 0.041,
            "total_seconds": 4.942},
}


def test_binary_card_states_the_operating_point_and_its_evidence():
    card = model_card(BINARY_CONFIG, BINARY_METRICS)
    assert card.startswith("# Model card: head on heart:hungary")
    assert "0.2.0" in card and "2025-05-01" in card
    op = section(card, "Positive class and operating point")
    assert "Positive class: disease" in op
    assert "sens=0.90" in op and "0.3100" in op and "the validation split" in op
    assert "30 (12 positive, 18 negative)" in op
    assert "only 12 validation positives" in op
    data = section(card, "Data and cohort")
    assert "40 labelled training and 30 labelled validation" in data
    assert "n = 120" in data and "no disease 70 (58.3%), disease 50 (41.7%)" in data
    assert "0.417" in data and "Split seed: 7" in data and "pretrained on heart:cleveland" in data
    assert "not a medical device" in section(card, "Intended use")


def test_binary_card_tables_test_metrics_with_cis():
    perf = section(model_card(BINARY_CONFIG, BINARY_METRICS), "Performance on the test split")
    assert "| AUC | 0.877 | [0.801, 0.934] |" in perf
    for label in ("sensitivity", "specificity", "PPV", "NPV", "F1", "balanced accuracy", "Brier score", "ECE",
                  "calibration slope", "calibration intercept"):
        assert f"| {label} |" in perf
    assert "percentile bootstraps over test examples" in perf


def test_binary_card_shows_calibration_before_and_after():
    cal = section(model_card(BINARY_CONFIG, BINARY_METRICS), "Calibration")
    assert "temperature" in cal and "1.7000" in cal
    # validation before / after, test before, test after (the test block itself)
    assert "| ECE | 0.123 | 0.051 | 0.139 | 0.044 |" in cal
    assert "| calibration slope | 0.610 | 1.020 | 0.580 | 0.970 |" in cal


def test_binary_card_lists_warnings_and_the_degenerate_note():
    card = model_card(BINARY_CONFIG, BINARY_METRICS)
    limits = section(card, "Limitations")
    assert "the selected model is from epoch 0" in limits
    assert "Degenerate predictions" in limits and "(disease)" in limits
    assert "40 labelled target examples" in limits
    assert "Test split of 120 examples (fewest in one class: 50)" in limits
    assert "Degenerate" not in model_card(BINARY_CONFIG, dict(BINARY_METRICS, predicted_counts={"no disease": 60,
                                                                                                 "disease": 60}))


def test_subgroups_and_provenance():
    card = model_card(BINARY_CONFIG, BINARY_METRICS)
    groups = section(card, "Subgroups")
    assert "No subgroup analysis was run" in groups
    assert "age, chol, sex, cp" in groups and "age, sex can define strata" in groups
    prov = section(card, "Provenance")
    assert "Epochs: 32 run of 100 planned; best epoch 12" in prov
    assert "split seed: 7" in prov and "Backbone: mlp" in prov and "`model_card.md`" in prov


def test_card_is_pure():
    config, metrics = copy.deepcopy(BINARY_CONFIG), copy.deepcopy(BINARY_METRICS)
    assert model_card(config, metrics) == model_card(config, metrics)
    assert config == BINARY_CONFIG and metrics == BINARY_METRICS


def test_multiclass_card_shows_per_class_rows_and_the_rule():
    card = model_card(MULTICLASS_CONFIG, MULTICLASS_METRICS)
    assert "Decision rule: argmax" in section(card, "Positive class and operating point")
    assert "macro means over the classes" in section(card, "Performance on the test split")
    perf = section(card, "Performance on the test split")
    for c in MULTICLASS_CONFIG["classes"]:
        for label in ("sensitivity", "specificity", "PPV", "NPV"):
            assert f"| {label}, {c} vs rest |" in perf
    assert "| sensitivity, eosinophil vs rest | 0.600 | [0.400, 0.800] |" in perf
    assert "not applicable" in section(card, "Data and cohort")
    assert "images" in section(card, "Subgroups")
    assert "Degenerate" not in card
    prior = dict(MULTICLASS_METRICS, operating_point={"rule": "prior"})
    assert "prior-corrected argmax" in model_card(MULTICLASS_CONFIG, prior)


def test_old_run_renders_not_recorded():
    card = model_card(OLD_CONFIG, OLD_METRICS)
    op = section(card, "Positive class and operating point")
    assert "Positive class: not recorded" in op and "threshold: not recorded" in op
    assert "per class: not recorded" in section(card, "Data and cohort")
    cal = section(card, "Calibration")
    assert "not recorded" in cal and "| ECE | 0.192 | 0.163 |" in cal
    assert "| AUC | 0.914 | [0.858, 0.959] |" in card
    assert "Predicted class counts on test: not recorded" in section(card, "Limitations")
    assert "date: not recorded" in card and "Epochs: 37 run of 100 planned; best epoch 17" in card
    assert not re.search(r"\bnan\b", card, re.IGNORECASE)


def test_nan_and_null_values_render_as_na():
    metrics = copy.deepcopy(BINARY_METRICS)
    metrics["test"]["ppv"] = {"value": float("nan"), "ci": [float("nan"), float("nan")]}
    metrics["test"]["npv"] = {"value": None, "ci": [None, None]}
    metrics["test"]["auc"] = {"value": 0.9, "ci": [0.8, None]}
    metrics["calibration"]["test_before"]["ece"] = float("nan")
    metrics["operating_point"]["threshold"] = None
    card = model_card(BINARY_CONFIG, metrics)
    assert "| PPV | n/a | n/a |" in card and "| NPV | n/a | n/a |" in card and "| AUC | 0.900 | n/a |" in card
    assert "| ECE | 0.123 | 0.051 | n/a | 0.044 |" in card
    assert "threshold: n/a" in card
    assert not re.search(r"\bnan\b", card, re.IGNORECASE)


def test_multilabel_and_empty_blocks_do_not_fail():
    config = {"data": "csv:x.csv", "strategy": "scratch", "task": "multilabel", "classes": ["a", "b"],
              "input": {"modality": "tabular"}}
    card = model_card(config, {"test": {"auc": entry(0.8), "auc_1": entry(0.7)}})
    assert "| AUC, b | 0.700 | n/a |" in card and "Positive class:" not in card
    assert model_card({}, {}).startswith("# Model card: not recorded on not recorded")
