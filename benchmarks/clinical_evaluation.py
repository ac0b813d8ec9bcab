"""The clinical-evaluation checks on the shared data, side by side, each a table (issue 13):

1. operating point: heart Cleveland -> Hungary, 20 labels, --threshold sens=0.90 against 0.5, 5 seeds;
2. class imbalance: BreastMNIST at 10% labels, --class-weight / --sampler balanced against none, 3 seeds;
3. calibration: OrganAMNIST -> PneumoniaMNIST `full` at 10% labels, test ECE before and after
   --calibrate temperature (one run per seed holds both), 3 seeds.

Every number is a test-split number of a model whose threshold and calibration were chosen on validation.

    python benchmarks/clinical_evaluation.py --only threshold
    python benchmarks/clinical_evaluation.py            # all three (about 20 min on 2 CPU cores)
"""

from __future__ import annotations

import argparse
import statistics
import time

import medtransfer as mt


def mean(values) -> str:
    values = [v for v in values if v == v]
    return f"{statistics.mean(values):.3f}" if values else "n/a"


def table(title: str, header: list[str], rows: list[list[str]]) -> None:
    print(f"\n{title}\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(map(str, row)) + " |")


def row_now(row: list) -> list:
    """Print a row as soon as it is measured (a long run that is stopped keeps what it measured)."""
    print("  " + " | ".join(map(str, row)), flush=True)
    return row


def test(run, name: str) -> float:
    return run.metrics["test"][name]["value"]


def threshold_check(args) -> None:
    rows = []
    for strategy in args.heart_strategies:
        for rule in ("0.5", "sens=0.90"):
            runs = [mt.transfer("heart:hungary", strategy, "heart:cleveland", budget=20, seed=s, threshold=rule,
                                save=False, progress=False, n_boot=0) for s in range(5)]
            rows.append([strategy, rule, mean(r.metrics["operating_point"]["threshold"] for r in runs),
                         mean(test(r, "sensitivity") for r in runs), mean(test(r, "specificity") for r in runs),
                         mean(test(r, "auc") for r in runs)])
    table("Heart Cleveland -> Hungary, 20 labels, 5 seeds (mean test values)",
          ["strategy", "--threshold", "threshold", "sensitivity", "specificity", "AUC"], rows)


def imbalance_check(args) -> None:
    """Each training setting once per seed, its threshold chosen by Youden on validation; the 0.5 numbers
    are recomputed from the same run's test probabilities (same model, the other operating point)."""
    rows = []
    settings = [("none", "none"), ("balanced", "none"), ("none", "balanced"), ("balanced", "balanced")]
    for strategy, source in args.breast_methods:
        for class_weight, sampler in settings:
            runs = [mt.transfer("medmnist:breastmnist", strategy, source, budget="10%", seed=s,
                                class_weight=class_weight, sampler=sampler, epochs=args.breast_epochs,
                                image_size=args.breast_image_size, threshold="youden", data_root=args.data_root,
                                save=False, progress=False, n_boot=0) for s in range(3)]
            at_half = [at_threshold(r, 0.5) for r in runs]
            for label, values in (("0.5", at_half), ("youden", [r.metrics["test"] for r in runs])):
                rows.append(row_now([f"{strategy} ← {source or 'none'}", class_weight, sampler, label,
                                     mean(v["sensitivity"]["value"] for v in values),
                                     mean(v["specificity"]["value"] for v in values),
                                     mean(v["balanced_acc"]["value"] for v in values),
                                     mean(test(r, "auc") for r in runs)]))
    table(f"BreastMNIST 10% labels (55), positive class malignant, 3 seeds, {args.breast_epochs} epochs at "
          f"{args.breast_image_size or 'the default'} px",
          ["method", "class weight", "sampler", "threshold", "sensitivity", "specificity", "balanced acc", "AUC"],
          rows)


def at_threshold(run, threshold: float) -> dict:
    """The run's test metrics at another threshold (same probabilities, same positive class)."""
    from medtransfer.evaluation import compute_metrics

    test = run.predictions[run.predictions["split"] == "test"]
    prob = test[[f"prob_{c}" for c in run.config["classes"]]].to_numpy()
    positive = run.config["classes"].index(run.config["positive"])
    return compute_metrics(test["label"].to_numpy(), prob, "binary", n_boot=0, threshold=threshold,
                           positive=positive)


def calibration_check(args) -> None:
    rows = []
    for s in range(3):
        run = mt.transfer("medmnist:pneumoniamnist", "full", "medmnist:organamnist", budget="10%", seed=s,
                          calibrate="temperature", epochs=args.epochs, image_size=args.image_size, source_epochs=2,
                          data_root=args.data_root, save=False, progress=False, n_boot=0)
        cal = run.metrics["calibration"]
        rows.append([s, f"{cal['params']['temperature']:.3f}", f"{cal['test_before']['ece']:.4f}",
                     f"{test(run, 'ece'):.4f}", f"{cal['test_before']['brier']:.4f}", f"{test(run, 'brier'):.4f}"])
    table(f"OrganAMNIST -> PneumoniaMNIST, full, 10% labels, {args.epochs} epochs at {args.image_size} px",
          ["seed", "temperature", "test ECE before", "test ECE after", "Brier before", "Brier after"], rows)


CHECKS = {"threshold": threshold_check, "imbalance": imbalance_check, "calibration": calibration_check}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=list(CHECKS), action="append")
    parser.add_argument("--data-root", default="../shared/data/medmnist")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--breast-epochs", type=int, default=None, help="default: the image default (15)")
    parser.add_argument("--breast-image-size", type=int, default=None, help="default: 64 (128 for ImageNet)")
    parser.add_argument("--heart-strategies", nargs="+", default=["full", "head", "linear-probe", "target-only"])
    args = parser.parse_args()
    args.breast_methods = [("linear-probe", "imagenet:efficientnet_lite0"), ("scratch", None)]
    for name in args.only or CHECKS:
        start = time.perf_counter()
        CHECKS[name](args)
        print(f"({name}: {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
