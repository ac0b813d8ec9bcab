"""`medtransfer` command line: a thin layer over the Python API (medtransfer.api).

Bad input (a usage error too) prints one line (`error: …`) and exits with code 2; `--debug` shows the
traceback. Ctrl-C prints `interrupted` and exits with code 130. `medtransfer --version` names the version.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
# the errors typer's parser raises: typer 0.29 vendors click as typer._click, older typer (which Flower pins) uses click
try:
    from typer._click.exceptions import BadParameter, MissingParameter, NoArgsIsHelpError, NoSuchOption, UsageError
except ImportError:
    from click.exceptions import BadParameter, MissingParameter, NoArgsIsHelpError, NoSuchOption, UsageError

from .errors import MedTransferError
from .runs import check_file_writable
from .reporting.blocks import Table, metrics_table

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Transfer learning on medical data: source model -> transfer -> clinical evaluation.")
console = Console()

DATA = typer.Option(..., "--data", "-d", help="dataset: medmnist:<flag>[@size], folder:<path>, csv:<path>, heart:<site>, "
                    "shift:<kind>[:<strength>]:<dataset>, signals: ucr:<prefix>, npz:<file>, "
                    "signal-folder:<path>, eeg:bonn|delhi, texts: text-csv:<path>, text:symptom2disease "
                    "(`medtransfer datasets` lists them)")
DATA_ROOT = typer.Option(None, "--data-root", envvar="MEDTRANSFER_DATA", help="folder with MedMNIST .npz files (or, for "
                         "ucr:NAME and eeg:NAME, with the signal files)")
TARGET = typer.Option(None, "--target", help="label column (csv: datasets)")
GROUP = typer.Option(None, "--group", help="patient column for patient-level splits (csv:, manifest:), or a DICOM "
                     "tag such as PatientID (folder:)")
BACKBONE = typer.Option(None, "--backbone", help="timm name (resnet18, tf_efficientnet_lite0, convnext_atto), "
                        "monai:resnet10 for 3D, mlp / mlp:64,32 / linear for tables, cnn1d / lstm / gru "
                        "(e.g. gru:hidden=64,bi,stride=4) for signals, minilm / a Hugging Face model folder / hf:<name> "
                        "for texts")
SEED = typer.Option(0, "--seed", help="seed for the label budget, initialisation and batches")
OUT = typer.Option(None, "--out", "-o", help="run directory to write (default: runs/<data>_<strategy>_…)")
OVERWRITE = typer.Option(False, "--overwrite", help="replace an existing run directory")
EPOCHS = typer.Option(None, "--epochs", help="maximum epochs (early stopping on validation AUC)")
PATIENCE = typer.Option(None, "--patience", help="stop after this many epochs without a better validation AUC")
LR = typer.Option(None, "--lr", help="learning rate of the head (backbone: 0.1x for full / lp-ft)")
BATCH = typer.Option(None, "--batch-size")


def _image_size(value: str) -> int | str:
    """--image-size: pixels, or 'native' (checked by the API, so a bad value gets its one line there)."""
    return int(value) if value.strip().lstrip("-").isdigit() else value


IMAGE_SIZE = typer.Option(None, "--image-size", parser=_image_size, metavar="PIXELS|native",
                          help="2D images are resized to this before the backbone (default 64; 128 for ImageNet "
                          "sources); 'native': each ImageNet/timm source at its own training resolution")
DEVICE = typer.Option("auto", "--device", help="auto, cpu, cuda or mps")
POSITIVE = typer.Option(None, "--positive", help="binary tasks: the positive class (default: the dataset's own, else "
                        "the class opposite one named normal/healthy/benign/negative/no…, else the second class)")
THRESHOLD = typer.Option(None, "--threshold", help="operating point, chosen on validation: 0.5 (default), a number, "
                         "youden, sens=0.90 or spec=0.95; multiclass: argmax (default) or prior")
CALIBRATE = typer.Option("none", "--calibrate", help="fit on validation: none, temperature, platt or isotonic "
                         "(platt/isotonic: binary)")
CLASS_WEIGHT = typer.Option(None, "--class-weight", help="none (default) or balanced: weigh the loss by inverse class "
                            "frequency (logistic heads too)")
SAMPLER = typer.Option(None, "--sampler", help="none (default) or balanced: draw training batches with every class "
                       "equally likely")
LAYER_DECAY = typer.Option(None, "--layer-decay", help="full / lp-ft / l2-sp: each backbone stage's learning rate "
                           "is the head's x decay^depth (default 0.7 for images and signals), or flat: the whole "
                           "backbone at 0.1 x the head (the default for volumes, tables and text)")
PRECISION = typer.Option(None, "--precision", help="auto (bf16 autocast on CUDA, fp32 elsewhere), bf16 or fp32")
CHANNELS_LAST = typer.Option(None, "--channels-last/--no-channels-last", help="2D images and weights in NHWC layout "
                             "(faster on GPUs)")
COMPILE = typer.Option(None, "--compile/--no-compile", help="torch.compile the training steps (GPU; falls back with a "
                       "warning)")
TEXT = typer.Option(None, "--text", help="the column holding the texts (text-csv: datasets; default: a column named "
                   "text)")
ID = typer.Option(None, "--id", help="identifier column of a csv: table (kept in predictions, never a feature)")
DROP = typer.Option(None, "--drop", help="a column of a csv: table to leave out (repeatable)")
QUIET = typer.Option(False, "--quiet", "-q", help="no progress bars")
DEVICES = typer.Option(None, "--devices", help="train data-parallel (DDP) on N devices: N GPUs with --device cuda, N "
                       "processes on CPU; --batch-size stays the global batch (docs/multi-device.md)")
NUM_NODES = typer.Option(None, "--num-nodes", help="machines taking part (set MASTER_ADDR, MASTER_PORT and NODE_RANK "
                         "on each, and run the same command on every one)")


def show_version(value: bool) -> None:
    """`medtransfer --version`: the version to quote in a bug report."""
    if value:
        from . import __version__
        print(f"medtransfer {__version__}")
        raise typer.Exit()


@app.callback()
def root(version: bool = typer.Option(False, "--version", callback=show_version, is_eager=True,
                                      help="print the version and exit")):
    pass


@app.command()
def datasets(data_root: Optional[Path] = DATA_ROOT):
    """List dataset schemes, the built-in heart sites and the MedMNIST files found in the data root.

    Example: medtransfer datasets --data-root ../shared/data/medmnist
    """
    from .data import SCHEMES
    from .data.medmnist import FLAGS, default_data_root, file_name
    from .data.tabular import HEART_SITES

    for scheme, text in SCHEMES.items():
        console.print(f"[bold]{scheme}:[/bold] {text}")
    console.print("heart sites: " + ", ".join(HEART_SITES))
    root = Path(data_root) if data_root else default_data_root()
    found = [f"medmnist:{flag}" + (f"@{size}" if size != 28 else "") for flag in FLAGS for size in (28, 64, 128, 224)
             if (root / file_name(flag, size)).is_file()]
    console.print(f"MedMNIST files in {root}: " + (", ".join(found) if found else "none"))


@app.command()
def strategies():
    """List the transfer strategies, with what each needs (its tags).

    Example: medtransfer strategies
    """
    from .strategies import STRATEGIES

    for name, cls in sorted(STRATEGIES.items()):
        tags = (("source model", cls.needs_source_model), ("source data", cls.needs_source_data),
                ("unlabelled target", cls.needs_unlabelled_target))
        needs = [what for what, tag in tags if tag]
        needs.append("target labels" if cls.needs_labels else "no target labels")
        kind = "baseline; " if cls.baseline else ""
        console.print(f"[bold]{name:16s}[/bold] {cls.summary} [dim]({kind}needs {', '.join(needs)})[/dim]")


@app.command()
def pretrain(data: List[str] = typer.Option(..., "--data", "-d", help="dataset(s): medmnist:<flag>[@size], "
             "folder:<path> (class folders, or a flat folder of unlabelled images), csv:<path>, heart:<site>; "
             "simclr/moco: repeat --data or give a comma list to pool several image datasets (labels ignored)"),
             method: str = typer.Option("supervised", "--method", "-m", help="supervised (labels), or self-supervised "
                                        "simclr / moco (MoCo v2) on the training images"),
             backbone: Optional[str] = BACKBONE, out: Optional[Path] = OUT,
             seed: int = SEED, epochs: Optional[int] = EPOCHS, lr: Optional[float] = LR,
             batch_size: Optional[int] = BATCH, image_size: Optional[str] = IMAGE_SIZE,
             patience: Optional[int] = PATIENCE,
             temperature: Optional[float] = typer.Option(None, "--temperature", help="simclr/moco: contrastive "
                                                         "temperature (default 0.5 simclr, 0.2 moco)"),
             queue_size: Optional[int] = typer.Option(None, "--queue-size", help="moco: negatives in the queue "
                                                      "(default min(4096, half the images))"),
             momentum: Optional[float] = typer.Option(None, "--momentum", help="moco: key-encoder EMA momentum "
                                                      "(default 0.99)"),
             view: Optional[List[str]] = typer.Option(None, "--view", help="simclr/moco augmentation, repeatable "
                                                      "name=value: crop_scale=0.35,1 ratio=0.75,1.33 degrees=10 "
                                                      "hflip=0.5 vflip=0 p_intensity=0.8 brightness=0.2 "
                                                      "contrast=0.2 gamma=0.7,1.4 p_blur=0.5 blur_sigma=0.1,1.5"),
             no_monitor: bool = typer.Option(False, "--no-monitor", help="simclr/moco: skip the k-NN AUC "
                                             "monitor on the first dataset's val split (then the last epoch is kept)"),
             limit: Optional[int] = typer.Option(None, "--limit", min=1, help="simclr/moco: pretrain on this many "
                                                 "images drawn (seeded) from the pooled training images"),
             data_root: Optional[Path] = DATA_ROOT, target: Optional[str] = TARGET, group: Optional[str] = GROUP,
             text: Optional[str] = TEXT, overwrite: bool = OVERWRITE, device: str = DEVICE, quiet: bool = QUIET,
             devices: Optional[int] = DEVICES, num_nodes: Optional[int] = NUM_NODES):
    """Pretrain a source model: supervised on a labelled source dataset, or self-supervised (SimCLR, MoCo v2)
    on the images of one or more datasets, labels ignored. Every transfer strategy takes the run folder as
    --source (a self-supervised source always gets a new head for the target).

    Example: medtransfer pretrain --data medmnist:organamnist --backbone resnet18 --epochs 4 --out runs/organ-r18

    Example: medtransfer pretrain --method simclr --data medmnist:pneumoniamnist --data medmnist:organamnist
    --epochs 100 --batch-size 256 --view crop_scale=0.35,1 --out runs/simclr-r18

    Example: medtransfer pretrain --method moco --data folder:./unlabelled_xrays --queue-size 4096 --out runs/moco
    """
    from . import api

    if method not in api.PRETRAIN_METHODS:
        raise MedTransferError(f"unknown --method {method!r}; choose one of: {', '.join(api.PRETRAIN_METHODS)}")
    ssl = {} if method == "supervised" else dict(monitor=not no_monitor)
    ssl.update({k: v for k, v in dict(temperature=temperature, queue_size=queue_size, momentum=momentum,
                                      views=view or None, limit=limit).items() if v is not None})
    if method == "supervised" and (no_monitor or ssl):
        given = [f"--{k.replace('_', '-')}" for k in ssl] + (["--no-monitor"] if no_monitor else [])
        raise MedTransferError(f"{', '.join(given).replace('--views', '--view')}: these options apply to --method "
                               "simclr or moco; add --method simclr (or moco), or drop them for supervised pretraining")
    result = api.pretrain(data, method=method, backbone=backbone, out=out, seed=seed, epochs=epochs, lr=lr,
                          batch_size=batch_size, image_size=image_size, patience=patience, data_root=data_root,
                          target=target, group=group, overwrite=overwrite, accelerator=device, progress=not quiet,
                          devices=devices, num_nodes=num_nodes, **ssl, **({"text": text} if text else {}))
    if result is None:
        show_other_node()
    elif method == "supervised":
        show_result(result)
    else:
        show_pretrain_result(result)


def input_noun(config: dict) -> str:
    return "signals" if config["input"]["modality"] == "signal" else "images"


def show_pretrain_result(result) -> None:
    config, fit, monitor = result.config, result.metrics["fit"], result.metrics["monitor"]
    rows = [[f"best k-NN AUC ({monitor['data']} val, n={monitor['n_val']})", f"{monitor['best']:.4f}"]] \
        if monitor else []
    rows += [["epoch kept", f"{fit['best_epoch']} of {fit['epochs_run']}" + ("" if monitor else " (last: no monitor)")],
             ["seconds (training and monitor)", f"{fit['seconds']:.1f}"]]
    show(Table(["", "value"], rows, title=f"{config['method']} pretraining on {', '.join(config['data'])} "
                                          f"({config['n_images']} {input_noun(config)}, {config['backbone']})"))
    if result.out:
        console.print(f"run written to {result.out}; use it with: medtransfer transfer --source {result.out} …")


@app.command()
def transfer(data: str = DATA, strategy: str = typer.Option("full", "--strategy", "-s",
             help="transfer strategy, e.g. full, head, linear-probe, l2-sp, or the baseline scratch; "
             "`medtransfer strategies` lists them all with what each needs"),
             source: Optional[str] = typer.Option(None, "--source", help="run folder, weights file, "
             "imagenet:efficientnet_lite0 (or _lite1, _lite2), timm:<name>, minilm or hf:<name> (texts), a source "
             "dataset (pretrained first, cached; "
             "dann, coral, mmd and prior-shift need one), or multi:<dataset>,<dataset>,… (one backbone, a head per "
             "dataset, trained jointly), stack:<source>+<source>+… (features side by side), or slices:<source> (a 2D "
             "source reading a 3D target's planes)"),
             budget: Optional[str] = typer.Option(None, "--budget", "-b", help="labelled target examples: 40, 5%, all, "
                                                  "or 0 (for the strategies that need no target labels)"),
             backbone: Optional[str] = BACKBONE, seed: int = SEED,
             split_seed: int = typer.Option(0, "--split-seed", help="redraw the target's train/val/test split "
                                            "(csv:, heart:, folder: without split folders): repeated hold-out"),
             out: Optional[Path] = OUT,
             epochs: Optional[int] = EPOCHS, lr: Optional[float] = LR, batch_size: Optional[int] = BATCH,
             image_size: Optional[str] = IMAGE_SIZE, patience: Optional[int] = PATIENCE,
             source_epochs: Optional[int] = typer.Option(None, "--source-epochs", help="epochs when pretraining a source dataset"),
             data_root: Optional[Path] = DATA_ROOT, target: Optional[str] = TARGET, group: Optional[str] = GROUP,
             id_column: Optional[str] = ID, drop: Optional[List[str]] = DROP, text: Optional[str] = TEXT,
             positive: Optional[str] = POSITIVE, threshold: Optional[str] = THRESHOLD, calibrate: str = CALIBRATE,
             class_weight: Optional[str] = CLASS_WEIGHT, sampler: Optional[str] = SAMPLER,
             layer_decay: Optional[str] = LAYER_DECAY, precision: Optional[str] = PRECISION,
             channels_last: Optional[bool] = CHANNELS_LAST, compile_steps: Optional[bool] = COMPILE,
             dp: Optional[str] = typer.Option(None, "--dp", help="train with differential privacy (DP-SGD, Opacus): "
                                              "epsilon=E[,delta=D][,clip=C], e.g. epsilon=1 (delta default "
                                              "min(1e-5, 1/(10 n)), clip 1.0); full, head, partial, scratch"),
             unlabelled: Optional[str] = typer.Option(None, "--unlabelled", help="folder:<path>: more images from the "
                                                      "target hospital without labels (any layout): the linear "
                                                      "probe standardises its features on them, dann / coral / "
                                                      "mmd / prior-shift adapt to them"),
             overwrite: bool = OVERWRITE, device: str = DEVICE, quiet: bool = QUIET,
             devices: Optional[int] = DEVICES, num_nodes: Optional[int] = NUM_NODES):
    """Move a source model to a target dataset with a strategy; evaluate on the target's test split.

    Example: medtransfer transfer --data heart:hungary --source heart:cleveland --strategy full --budget 20

    Example (an operating point for screening): medtransfer transfer --data heart:hungary --source heart:cleveland
    --strategy head --budget 20 --threshold sens=0.90 --calibrate platt

    Example (no target labels): medtransfer transfer --data shift:gamma:medmnist:pneumoniamnist
    --source medmnist:pneumoniamnist --strategy dann --budget 0
    """
    from . import api
    from .pipeline.request import layer_decay_option

    result = api.transfer(data, strategy, source, budget=budget, seed=seed, split_seed=split_seed,
                          backbone=backbone, out=out,
                          overwrite=overwrite, data_root=data_root, target=target, group=group, epochs=epochs,
                          lr=lr, batch_size=batch_size, image_size=image_size, patience=patience,
                          source_epochs=source_epochs, accelerator=device, progress=not quiet, positive=positive,
                          threshold=threshold, calibrate=calibrate, class_weight=class_weight, sampler=sampler,
                          id=id_column, drop=tuple(drop or ()), layer_decay=layer_decay_option(layer_decay),
                          precision=precision,
                          channels_last=channels_last, compile=compile_steps, text=text, dp=dp, devices=devices,
                          num_nodes=num_nodes, unlabelled=unlabelled)
    if result is None:
        show_other_node()
    else:
        show_result(result)


def show_other_node() -> None:
    """A node other than node 0 of a multi-node run: its processes trained; node 0 wrote the run."""
    console.print("this node's processes are done; node 0 (rank 0) wrote the run and shows its results")


@app.command("shift")
def shift_command(
        source: str = typer.Option(..., "--source", help="source dataset, where the model was trained "
                                   "(e.g. heart:cleveland, medmnist:pneumoniamnist)"),
        target: str = typer.Option(..., "--target", help="target dataset, the other hospital (e.g. heart:va, "
                                   "shift:gamma:medmnist:pneumoniamnist); its labels are not used"),
        model: Optional[Path] = typer.Option(None, "--model", help="run folder of the source model (its features "
                                             "are compared for images, its outputs estimate the prior); tables "
                                             "default to a logistic regression fitted on the source"),
        out: Optional[Path] = typer.Option(None, "--out", "-o",
                                           help="report folder (default shift/<source>_to_<target>)"),
        seed: int = typer.Option(0, "--seed", help="seed for folds, permutations, bootstrap and subsampling"),
        permutations: int = typer.Option(1000, "--permutations", min=0, help="MMD permutation-test draws"),
        max_samples: int = typer.Option(2000, "--max-samples", min=10, help="at most this many examples per site"),
        label_column: Optional[str] = typer.Option(None, "--label-column", help="label column (csv: datasets)"),
        group: Optional[str] = GROUP, data_root: Optional[Path] = DATA_ROOT, overwrite: bool = OVERWRITE,
        device: str = DEVICE):
    """Diagnose how a target hospital differs from the source, without target labels: covariate shift
    (domain-classifier AUC, kernel MMD test), label shift (target prevalence by EM and BBSE) and which
    features or classes shift most. Writes shift.md, shift.json and plots.

    Example: medtransfer shift --source heart:cleveland --target heart:switzerland --out shift/switzerland

    Example: medtransfer shift --source medmnist:pneumoniamnist --target shift:blur:1.5:medmnist:pneumoniamnist
    --model runs/pneumonia-r18
    """
    from . import api

    diag = api.shift(source, target, model=model, out=out, overwrite=overwrite, data_root=data_root,
                     label_column=label_column, group=group, seed=seed, n_perm=permutations,
                     max_samples=max_samples, accelerator=device)
    d, m = diag.domain, diag.mmd
    rows = [["domain classifier AUC [95% CI]", f"{d['auc']:.3f} [{d['ci'][0]:.3f}, {d['ci'][1]:.3f}]"],
            ["kernel MMD² (permutation p)", f"{m['mmd2']:.4f} (p = {m['p']:.3g})"]]
    if diag.label is not None:
        lab = diag.label
        for k, name in enumerate(diag.classes):
            truth = f", labels {lab['true'][k]:.3f}" if "true" in lab else ""
            rows.append([f"prior '{name}': source -> EM / BBSE",
                         f"{lab['source'][k]:.3f} -> {lab['em'][k]:.3f} / {lab['bbse'][k]:.3f}{truth}"])
    show(Table(["measure", "value"], rows, title=f"shift {source} -> {target}"))
    from .evaluation.shift import readings
    for line in readings(diag):
        console.print(f"- {line}", highlight=False)
    if diag.out:
        console.print(f"report written to {diag.out / 'shift.md'}")


@app.command()
def rank(data: str = DATA,
         sources: List[str] = typer.Option(..., "--sources", help="candidate sources, comma-separated (repeatable): "
                                           "run folders, weights files, imagenet:<name>, timm:<name>, source datasets "
                                           "(pretrained once, cached, as transfer does); a multi: source, whose list "
                                           "has commas, goes in its own --sources"),
         budget: Optional[str] = typer.Option(None, "--budget", "-b", help="labelled target training examples to "
                                              "score on, drawn as transfer draws them: 40, 5%, all (default)"),
         seed: int = SEED, backbone: Optional[str] = BACKBONE, image_size: Optional[str] = IMAGE_SIZE,
         source_epochs: Optional[int] = typer.Option(None, "--source-epochs", help="epochs when pretraining a source "
                                                     "dataset"),
         against: Optional[Path] = typer.Option(None, "--against", help="an experiment folder: Kendall's tau between "
                                                "each score and its sources' validation-chosen test AUCs at --budget "
                                                "(sources pretrained as the grid's config.yaml did)"),
         out: Optional[Path] = typer.Option(None, "--out", "-o", help="folder to write rank.json and rank.md"),
         data_root: Optional[Path] = DATA_ROOT, target: Optional[str] = TARGET, group: Optional[str] = GROUP,
         overwrite: bool = OVERWRITE, device: str = DEVICE, quiet: bool = QUIET):
    """Rank candidate sources for a target before any fine-tuning: LogME on each source's frozen features of
    the target's labelled training examples, and LEEP / NCE where the source has a classifier head. A source
    that cannot run on the target is listed with its reason.

    Example: medtransfer rank --data heart:hungary --sources heart:cleveland,heart:va,heart:switzerland --budget 20

    Example: medtransfer rank --data medmnist:breastmnist --sources imagenet:efficientnet_lite0,medmnist:organamnist
    --budget 10% --against experiments/breast --out rank/breast
    """
    from . import api

    result = api.rank(data, sources, budget=budget, seed=seed, data_root=data_root, target=target, group=group,
                      image_size=image_size, backbone=backbone, source_epochs=source_epochs, accelerator=device,
                      out=out, overwrite=overwrite, against=against, progress=not quiet)
    show(*api.rank_blocks(result))
    if result.out:
        console.print(f"written to {result.out / 'rank.json'} and {result.out / 'rank.md'}", highlight=False)


@app.command()
def evaluate(run: Path = typer.Argument(..., help="a run directory"),
             data: Optional[str] = typer.Option(None, "--data", "-d", help="evaluate on another dataset (e.g. another site)"),
             split: str = typer.Option("test", "--split", help="train, val, test, or all (every example: "
                                       "external validation of a whole dataset)"),
             data_root: Optional[Path] = DATA_ROOT,
             json_out: Optional[Path] = typer.Option(None, "--json", help="also write the metrics to this file"),
             predictions: Optional[Path] = typer.Option(None, "--predictions", help="also write per-example "
                                                        "predictions (id, label, probabilities, decision) to this CSV")):
    """Clinical metrics with 95% bootstrap CIs for a saved run, at the run's own operating point.

    Example: medtransfer evaluate runs/heart-hungary_full_20_s0 --data heart:va --split all
    """
    from . import api
    from .runs import dumps

    for path, option in ((json_out, "--json"), (predictions, "--predictions")):
        if path:
            check_file_writable(path, option)
    metrics = api.evaluate(run, data=data, split=split, data_root=data_root, predictions=predictions)
    counts = metrics.get("counts", {})
    n = f", n={counts['n']}" if counts else ""
    show(metrics_table(metrics, f"{run} on {data or 'its own data'} ({split}{n})"))
    show_operating_point(metrics.get("operating_point"), counts, split=split)
    if json_out:
        json_out.write_text(dumps(metrics, indent=2))


@app.command()
def predict(run: Path = typer.Argument(..., help="a run directory"),
            inputs: str = typer.Argument(..., help="CSV of patients, an image, a folder of images, or a dataset"),
            out: Optional[Path] = typer.Option(None, "--out", "-o", help="write predictions to this CSV"),
            data_root: Optional[Path] = DATA_ROOT, overwrite: bool = OVERWRITE):
    """Class probabilities of a saved run for new inputs.

    Example: medtransfer predict runs/heart-hungary_full_20_s0 new_patients.csv --out predictions.csv
    """
    from . import api

    if out:
        check_file_writable(out, "--out", overwrite)
    frame = api.predict(run, inputs, data_root=data_root)
    if out:
        frame.to_csv(out, index=False)
        console.print(f"wrote {len(frame)} predictions to {out}")
    else:
        console.print(frame.to_string(index=False, max_rows=40))


@app.command()
def explain(run: Path = typer.Argument(..., help="a run directory"),
            inputs: str = typer.Argument(..., help="what predict takes: a CSV of patients or texts, an image, a folder "
                                         "of images or recordings, or a dataset (its test split)"),
            out: Path = typer.Option(..., "--out", "-o", help="folder for the explanations (refused when not empty, "
                                     "unless --overwrite)"),
            method: Optional[str] = typer.Option(None, "--method", help="gradcam or gradcam++ (images, the default "
                                                 "gradcam); ig, integrated gradients (tables, signals, texts)"),
            class_name: Optional[str] = typer.Option(None, "--class", help="the class explained (default: the "
                                                     "positive class of a binary run, else the class decided)"),
            limit: Optional[int] = typer.Option(None, "--limit", help="explain the first N inputs only"),
            layer: Optional[str] = typer.Option(None, "--layer", help="images: the backbone stage the maps come from "
                                                "(default: the last)"),
            data_root: Optional[Path] = DATA_ROOT,
            overwrite: bool = typer.Option(False, "--overwrite", help="replace the contents of --out"),
            seed: int = typer.Option(0, "--seed", help="seed of the randomised model (images) and the permutations "
                                     "(tables)")):
    """Why a run decided what it did: Grad-CAM overlays with a model-randomisation sanity check (images),
    attributions by original column and permutation importance (tables), integrated gradients (signals, texts).
    Writes predictions.csv, explanations.csv, explanations.md / .html and the figures into --out.

    Example: medtransfer explain runs/pneumonia medmnist:pneumoniamnist --out explain/pneumonia --limit 20
    """
    from . import api

    result = api.explain(run, inputs, out, method=method, class_name=class_name, limit=limit, layer=layer,
                         overwrite=overwrite, data_root=data_root, seed=seed)
    sanity = result.sanity
    if sanity and sanity.get("n_defined"):
        console.print(f"sanity check (model randomisation, {result.layer}): Spearman rho between trained and "
                      f"randomised maps, mean {sanity['mean_rho']:.3f} (range {sanity['min_rho']:.3f} to "
                      f"{sanity['max_rho']:.3f}) over {sanity['n_defined']} inputs: {sanity['reading']}")
    elif sanity:
        console.print(f"sanity check: {sanity['reading']}")
    if result.importance is not None:
        imp = result.importance
        show(Table(["column", "AUC drop (mean)", "std"],
                   [[r.column, f"{r.mean_drop:.4f}", f"{r.std_drop:.4f}"] for r in imp.itertuples()],
                   title=f"permutation importance by original column (test AUC {imp['test_auc'].iloc[0]:.4f})"))
    console.print(f"explained {len(result.explained)} input(s) with {result.method}: {result.out / 'explanations.md'}")


@app.command("export")
def export_command(run: Path = typer.Argument(..., help="a run directory"),
                   format: str = typer.Option(..., "--format", "-f", help="onnx or torchscript"),  # noqa: A002
                   out: Path = typer.Option(..., "--out", "-o", help="the model file to write (and <out>.json beside "
                                            "it), e.g. model.onnx"),
                   overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing --out"),
                   data_root: Optional[Path] = DATA_ROOT,
                   examples: Optional[int] = typer.Option(None, "--examples", help="check parity on the first N test "
                                                          "examples only (default: the whole test split)")):
    """Export a run's model with its preprocessing and operating point: ONNX (onnxruntime, TensorFlow via onnx2tf)
    or TorchScript. The file takes what predict feeds the model (images in [0, 1], volumes, encoded table rows,
    signals) and outputs class probabilities; it is kept only if it matches the run on its test split (max |Δp|
    <= 1e-4). Writes --out and --out.json (classes, threshold, input contract, parity).

    Example: medtransfer export runs/pneumonia --format onnx --out pneumonia.onnx
    """
    from . import api

    result = api.export(run, format, out, overwrite=overwrite, data_root=data_root, examples=examples)
    record = result.description
    point, parity = record["operating_point"], record["parity"]
    size = record["file"]["bytes"]
    size = f"{size / 1e6:.1f} MB" if size >= 1e5 else f"{size / 1e3:.0f} kB"
    for line in (f"wrote {result.path} ({result.format}, {size}) and {result.sidecar}",
                 f"input {record['input']['name']} {record['input']['dtype']} {record['input']['shape']} -> "
                 f"probabilities {record['classes']}; decision: {point['decision']}",
                 f"parity with the run on {parity['n']} test examples of {parity['data']}: max |Δp| = "
                 f"{parity['max_abs_diff']:.2e} (allowed {parity['tolerance']:g}; {parity['runtime']})"):
        console.print(line, highlight=False, markup=False, emoji=False)


@app.command()
def serve(run: Path = typer.Argument(..., help="a run directory"),
          host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (--no-auth: loopback only)"),
          port: int = typer.Option(8000, "--port", help="port to listen on (0: a free one)"),
          token: Optional[str] = typer.Option(None, "--token", help="bearer token clients must send (better: the "
                                              "MEDTRANSFER_TOKEN environment variable, not shown by ps)"),
          no_auth: bool = typer.Option(False, "--no-auth", help="serve without a token (refused unless --host is "
                                       "a loopback address)"),
          max_mb: float = typer.Option(10.0, "--max-mb", help="largest request body, in megabytes (413 above)"),
          max_batch: int = typer.Option(256, "--max-batch", help="most inputs (rows, files, texts, signals) per "
                                        "request")):
    """Serve a run over HTTP until Ctrl-C: POST /predict, GET /model-card (bearer token) and GET /health.

    Example: MEDTRANSFER_TOKEN=... medtransfer serve runs/heart-hungary_full_20_s0 --port 8000
    """
    from .serve import serve as serve_run

    serve_run(run, host=host, port=port, token=token, no_auth=no_auth, max_mb=max_mb, max_batch=max_batch)


@app.command()
def demo(data_root: Optional[Path] = DATA_ROOT,
         out: Path = typer.Option(Path("demo-report"), "--out", "-o", help="folder for report.md"),
         seeds: int = typer.Option(5, "--seeds", help="seeds per cell"),
         images: bool = typer.Option(True, "--images/--no-images", help="also run the short MedMNIST transfer")):
    """Offline demo on built-in real data: Cleveland -> three other hospitals, and (when MedMNIST files are in
    the data root) ImageNet -> PneumoniaMNIST with 1% of the labels. Prints AUC [95% CI] per cell.

    Example: medtransfer demo --seeds 5
    """
    from .demo import run_demo

    run_demo(out, seeds=seeds, data_root=data_root, images=images, console=console)


@app.command()
def experiment(config: Path = typer.Argument(..., help="experiment YAML (see examples/heart-sites.yaml)"),
               out: Optional[Path] = typer.Option(None, "--out", "-o", help="experiment folder "
                                                  "(default: experiments/<name>); re-run to resume"),
               jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="cells run in parallel processes "
                                        "(--backend ray without --address: the CPUs of the local Ray)"),
               data_root: Optional[Path] = DATA_ROOT, quiet: bool = QUIET,
               overwrite: bool = typer.Option(False, "--overwrite", help="replace another experiment found in --out"),
               backend: str = typer.Option("local", "--backend", help="where cells run: local (processes here) or "
                                           "ray (Ray tasks, here or on a cluster: docs/distributed.md)"),
               address: Optional[str] = typer.Option(None, "--address", help="the Ray cluster's head (host:port or "
                                                     "auto; default: a local Ray, stopped afterwards)"),
               gpus_per_cell: float = typer.Option(0.0, "--gpus-per-cell", help="GPUs Ray reserves for each cell "
                                                   "(0.5: two cells share one)")):
    """Run a grid of targets x sources x strategies x label budgets x seeds; resumable. Writes results.csv,
    an MLflow store (mlflow.db) and report.html / report.md. Cells that cannot run are listed as failed
    (exit 2 once everything is written); a re-run retries them.

    Example: medtransfer experiment examples/heart-sites.yaml --jobs 2
    On a Ray cluster (docs/distributed.md): medtransfer experiment grid.yaml --backend ray --address HEAD:6379
    """
    from . import api

    api.experiment(config, out=out, jobs=jobs, data_root=str(data_root) if data_root else None,
                   progress=not quiet, console=console, overwrite=overwrite, backend=backend, address=address,
                   gpus_per_cell=gpus_per_cell)


@app.command()
def report(folder: Path = typer.Argument(..., help="an experiment folder")):
    """(Re)write report.html and report.md of an experiment from its results.

    Example: medtransfer report experiments/heart-sites
    """
    from . import api

    html, md = api.write_report(folder)
    console.print(f"report: {html} and {md}")


@app.command()
def federated(config: Path = typer.Argument(..., help="federated YAML (see examples/heart-federated.yaml)"),
              out: Optional[Path] = typer.Option(None, "--out", "-o",
                                                 help="results folder (default: federated/<name>)"),
              engine: Optional[str] = typer.Option(None, "--engine", help="simulation (Flower's simulation engine, "
                                                   "on Ray) or grpc (one client process per site over gRPC on "
                                                   "127.0.0.1); default: the config's engine"),
              overwrite: bool = OVERWRITE, quiet: bool = QUIET):
    """Federated transfer with Flower: the sites train one model together (FedAvg, FedProx, FedAdam; only weights
    and aggregate statistics leave a site), each then fine-tunes it on its own data; compared per site with
    local-only, pooled and source models. The config's `dp` levels add federations with DP-SGD at every site
    (Opacus; each site's spent epsilon in results.csv) and a privacy-utility curve. Writes results.csv,
    predictions.csv, the federated models and report.html / report.md (docs/federated.md).

    Example: medtransfer federated examples/heart-federated.yaml --out federated/heart
    """
    from . import api

    result = api.federated(config, out=out, engine=engine, overwrite=overwrite, progress=not quiet)
    means = result.results.groupby("method", sort=False)[["acc_at_0.5", "acc", "auc"]].mean()
    show(Table(["method", "accuracy at 0.5", "accuracy at operating point", "AUC"],
               [[m, f"{r['acc_at_0.5']:.3f}", f"{r['acc']:.3f}", f"{r['auc']:.3f}"] for m, r in means.iterrows()],
               title="test, mean over sites and seeds"))
    console.print(f"results: {result.out / 'results.csv'}; report: {result.out / 'report.html'}")


def show(*blocks) -> None:
    from .reporting.blocks import to_console
    to_console(console, list(blocks))


def show_result(result) -> None:
    config, metrics = result.config, result.metrics
    show(metrics_table(metrics["test"], f"{config['strategy']} on {config['data']} "
                                        f"({config['n_train_labels']} labelled training examples), test split"))
    show_operating_point(metrics.get("operating_point"), metrics.get("test_counts"), config.get("positive_rule"))
    calibration = metrics.get("calibration")
    if calibration and calibration.get("method") != "none":
        before, after = calibration["val_before"], calibration["val_after"]
        console.print(f"calibration: {calibration['method']} fitted on validation; validation ECE "
                      f"{before['ece']:.3f} -> {after['ece']:.3f}, Brier {before['brier']:.3f} -> {after['brier']:.3f}",
                      highlight=False)
    if metrics.get("dp"):
        console.print(dp_line(metrics["dp"]), highlight=False)
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
    if result.out:
        console.print(f"run written to {result.out} (model card: {result.out / 'model_card.md'})")


def dp_line(dp: dict) -> str:
    """One line under the metrics of a --dp run: the guarantee the accountant gives after the steps taken."""
    return (f"differential privacy: epsilon {dp['epsilon_spent']:.3f} spent of {dp['epsilon_target']:g} "
            f"(delta {dp['delta']:.2g}, {dp['accountant'].upper()} accountant) after {dp['steps']} DP-SGD steps; "
            f"noise multiplier {dp['noise_multiplier']:.3g}, clip {dp['clip']:g}, sample rate {dp['sample_rate']:.3g}")


def show_operating_point(point: dict | None, counts: dict | None, why: str | None = None, split: str = "test") -> None:
    """One line under the metrics: which class is positive and at which threshold they were computed."""
    if not point:
        return
    parts = []
    if point.get("positive") is not None:
        parts.append(f"positive class {point['positive']!r}" + (f" ({why})" if why else ""))
    if point.get("threshold") is not None:
        if point.get("chosen_on") == "val":
            rests = (f", on {point['n_val_positive']} positive and {point['n_val_negative']} negative validation "
                     "examples") if point.get("n_val_positive") is not None else ""
            parts.append(f"threshold {point['threshold']:.4g} ({point['rule']}, chosen on validation{rests})")
        else:
            parts.append(f"threshold {point['threshold']:.4g} (fixed)")
    else:
        parts.append(f"decision rule {point['rule']}")
    if counts and counts.get("per_class"):
        parts.append(f"{split} n=" + str(counts["n"]) + " (" + ", ".join(f"{c}: {k}" for c, k in counts["per_class"].items())
                     + ")")
    console.print("; ".join(parts), highlight=False)


def main() -> None:
    """Run a command; every ending has its documented exit code: 0 done, 2 bad input or usage (one line
    on stderr), 130 interrupted (one line), 1 an unexpected failure (one line; --debug: the traceback).

    The command is invoked here rather than through typer's `app(standalone_mode=False)`: that turns
    Ctrl-C into a *returned* 130 which was then dropped (exit 0, `experiment && report` carried on)."""
    debug = "--debug" in sys.argv[1:]
    args = [a for a in sys.argv[1:] if a != "--debug"]
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not when started with Ctrl-C ignored
        signal.signal(signal.SIGINT, raise_interrupted)
    try:
        command = typer.main.get_command(app)
        with command.make_context("medtransfer", args) as ctx:
            command.invoke(ctx)
    except (KeyboardInterrupt, typer.Abort):
        stop_children()
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as exc:  # --help, --version
        sys.exit(exc.exit_code)
    except BrokenPipeError:  # `medtransfer … | head` stopped reading: nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except NoArgsIsHelpError:  # the help is already shown
        sys.exit(2)
    except UsageError as exc:
        print(f"error: {usage_message(exc, args)}", file=sys.stderr)
        sys.exit(2)
    except MedTransferError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:  # an unexpected failure: still one line, the traceback on request
        if debug:
            raise
        print(f"error: {exc.__class__.__name__}: {exc} (run again with --debug for the traceback)", file=sys.stderr)
        sys.exit(1)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, raised by our own SIGINT handler. CPython flags a plain KeyboardInterrupt that leaves some
    C-level evaluation (here: during a run's imports) and then, at exit, kills itself with SIGINT even
    though main() handled it: exit 130 became a death by signal about one time in ten (strace: SIG_DFL,
    then kill(self, SIGINT), after "interrupted"). It flags only the exact type; a subclass is not."""


def raise_interrupted(signum, frame):
    raise Interrupted()


def stop_children() -> None:
    """After Ctrl-C, stop the worker processes (`experiment --jobs N`) instead of waiting at exit for
    their cells to finish; a cell stopped mid-way is staged, never half-written, and re-runs on resume."""
    import multiprocessing

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not add a traceback
    for child in multiprocessing.active_children():
        child.terminate()


def usage_message(exc: UsageError, args: list[str]) -> str:
    """A parser error as what is wrong (the option and the value given), and where the help is."""
    path = exc.ctx.command_path if exc.ctx is not None else command_path(args)
    see = f"see `{path} --help`"
    param = getattr(exc, "param", None)
    if isinstance(exc, NoSuchOption):
        guess = f" (did you mean {' or '.join(sorted(exc.possibilities))}?)" if exc.possibilities else ""
        return f"unknown option {exc.option_name} for `{path}`{guess}; {see}"
    if isinstance(exc, MissingParameter) and param is not None:
        return f"missing {param_name(param)}; {see}"
    if isinstance(exc, BadParameter) and param is not None:
        value = given_value(param, args)
        got = f" {value!r}" if value is not None else ""
        return f"bad value{got} for {param_name(param)}: {lowered(exc.message)}; {see}"
    return f"{lowered(exc.format_message())}; {see}"


def param_name(param) -> str:
    if param.param_type_name == "option":
        return "option " + max(param.opts, key=len)
    return f"argument {param.name.upper()}"


def given_value(param, args: list[str]) -> str | None:
    """The value the user typed for an option (`--epochs abc` or `--epochs=abc`), the last one given."""
    value = None
    for i, arg in enumerate(args):
        for opt in param.opts:
            if arg == opt and i + 1 < len(args):
                value = args[i + 1]
            elif arg.startswith(opt + "="):
                value = arg[len(opt) + 1:]
    return value


def command_path(args: list[str]) -> str:
    commands = typer.main.get_command(app).commands
    name = next((a for a in args if not a.startswith("-")), None)
    return f"medtransfer {name}" if name in commands else "medtransfer"


def lowered(text: str) -> str:
    text = text.strip().rstrip(".")
    return text[:1].lower() + text[1:]


if __name__ == "__main__":
    main()
