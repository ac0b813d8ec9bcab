"""Bad input through the command line, as a new user meets it on their own files.

Every case runs the CLI module as `python -m medtransfer.cli` does, in a process of its own, in its own copy
of a folder that already holds a run, an experiment, CSVs, image folders, weights and YAMLs (built by real
`python -m medtransfer.cli` runs), and must end with exit code 2, exactly one line on stderr starting with
`error:` that names what is wrong, no traceback, and no existing file changed (sha256 before and after).
The case processes are forked from a server that has torch imported, a few at a time, in a module fixture;
each test checks its own case.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import runpy
import shutil
import subprocess
import sys
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

RUN = ["--strategy", "target-only", "--budget", "10", "--quiet"]
TO_HUNGARY = ["transfer", "--data", "heart:hungary", "--quiet"]
HUNGARY = [*TO_HUNGARY, *RUN]
CSV = ["--target", "y", "--strategy", "target-only", "--quiet"]
GREY = ["--strategy", "scratch", "--backbone", "test_resnet", "--image-size", "16", "--epochs", "1", "--quiet"]
PROBE_GREY = ["--strategy", "linear-probe", "--source", "greyrun", "--quiet"]  # a strategy that reads --unlabelled
MISSING_DEVICE = "mps" if torch.cuda.is_available() else "cuda"  # an accelerator this machine lacks

# (id, command line, a fragment the one error line must hold). Paths are relative to the case's folder.
CASES = [
    # data schemes
    ("scheme-unknown", ["transfer", "--data", "nonsense:x", *RUN], "bad dataset"),
    ("scheme-none", ["transfer", "--data", "hungary", *RUN], "bad dataset"),
    ("csv-missing-file", ["transfer", "--data", "csv:data/nofile.csv", *CSV], "nofile.csv"),
    ("csv-no-target-option", ["transfer", "--data", "csv:data/patients.csv", "--strategy", "target-only"], "--target"),
    ("csv-target-not-a-column", ["transfer", "--data", "csv:data/patients.csv", "--target", "outcome",
                                 "--strategy", "target-only"], "outcome"),
    ("csv-header-only", ["transfer", "--data", "csv:data/header_only.csv", *CSV], "header_only.csv"),
    ("csv-one-class", ["transfer", "--data", "csv:data/one_class.csv", *CSV], "single class"),
    ("csv-not-a-table", ["transfer", "--data", "csv:img/grey/a/0.png", *CSV], "0.png"),
    ("folder-missing", ["transfer", "--data", "folder:img/nofolder", *GREY], "nofolder"),
    ("folder-is-a-file", ["transfer", "--data", "folder:data/patients.csv", *GREY], "not a directory"),
    ("folder-one-class", ["transfer", "--data", "folder:img/one_class", *GREY], "one_class"),
    ("folder-no-images", ["transfer", "--data", "folder:img/not_images", *GREY], "not_images"),
    ("folder-broken-images", ["transfer", "--data", "folder:img/broken", *GREY], "not a readable"),
    ("heart-unknown-site", ["transfer", "--data", "heart:mars", *RUN], "unknown heart site"),
    ("heart-with-target", ["transfer", "--data", "heart:hungary", "--target", "age", *RUN], "--target"),
    ("medmnist-unknown-flag", ["transfer", "--data", "medmnist:nosuchmnist", *RUN], "nosuchmnist"),
    ("shift-unknown-kind", ["transfer", "--data", "shift:wobble:folder:img/grey", *GREY], "unknown shift kind"),
    ("shift-bad-strength", ["transfer", "--data", "shift:gamma:-3:folder:img/grey", *GREY], "strength"),
    ("shift-on-a-table", ["transfer", "--data", "shift:gamma:heart:va", *RUN], "table"),
    ("unlabelled-missing", ["transfer", "--data", "folder:img/grey", "--unlabelled", "folder:img/nofolder",
                            *PROBE_GREY], "is not a directory"),
    ("unlabelled-no-scheme", ["transfer", "--data", "folder:img/grey", "--unlabelled", "img/grey", *PROBE_GREY],
     "not a folder: spec"),
    ("unlabelled-no-images", ["transfer", "--data", "folder:img/grey", "--unlabelled", "folder:img/not_images",
                              *PROBE_GREY], "no images"),
    ("unlabelled-ignored", ["transfer", "--data", "folder:img/grey", "--unlabelled", "folder:img/grey", *GREY],
     "'scratch' does not learn from unlabelled images"),
    ("unlabelled-on-a-table", [*HUNGARY, "--unlabelled", "folder:img/grey"], "2D image targets only"),
    ("shift-no-dataset", ["transfer", "--data", "shift:gamma", *RUN], "names no dataset"),
    # budgets
    ("budget-negative", ["transfer", "--data", "heart:hungary", "--strategy", "target-only", "--budget", "-4"],
     "bad budget"),
    ("budget-not-a-number", ["transfer", "--data", "heart:hungary", "--strategy", "target-only", "--budget", "abc"],
     "bad budget"),
    ("budget-over-100-percent", ["transfer", "--data", "heart:hungary", "--strategy", "target-only",
                                 "--budget", "150%"], "bad budget"),
    ("budget-zero-percent", ["transfer", "--data", "heart:hungary", "--strategy", "target-only", "--budget", "0%"],
     "bad budget"),
    ("budget-over-training-set", ["transfer", "--data", "heart:hungary", "--strategy", "target-only",
                                  "--budget", "100000"], "exceeds"),
    ("budget-below-classes", ["transfer", "--data", "heart:hungary", "--strategy", "target-only", "--budget", "1"],
     "number of classes"),
    ("budget-zero-needs-labels", ["transfer", "--data", "heart:hungary", "--strategy", "target-only",
                                  "--budget", "0"], "needs labelled target examples"),
    # options
    ("epochs-zero", [*HUNGARY, "--epochs", "0"], "epochs must be"),
    ("epochs-negative", [*HUNGARY, "--epochs", "-1"], "epochs must be"),
    ("epochs-not-a-number", [*HUNGARY, "--epochs", "abc"], "--epochs"),
    ("batch-size-zero", [*HUNGARY, "--batch-size", "0"], "batch_size must be"),
    ("layer-decay-word", [*HUNGARY, "--strategy", "full", "--layer-decay", "steep"], "--layer-decay must be"),
    ("layer-decay-zero", [*HUNGARY, "--layer-decay", "0"], "layer_decay must be a number in (0, 1] (1: every stage at the head's rate) or flat"),
    ("lr-zero", [*HUNGARY, "--lr", "0"], "lr must be"),
    ("lr-negative", [*HUNGARY, "--lr", "-1"], "lr must be"),
    ("lr-not-a-number", [*HUNGARY, "--lr", "fast"], "--lr"),
    ("image-size-zero", [*HUNGARY, "--image-size", "0"], "image_size must be"),
    ("image-size-typo", [*HUNGARY, "--image-size", "nativ"], "or 'native'"),
    ("patience-zero", [*HUNGARY, "--patience", "0"], "patience must be"),
    ("source-epochs-zero", [*HUNGARY, "--source-epochs", "0"], "source_epochs must be"),
    ("seed-not-an-integer", [*HUNGARY, "--seed", "1.5"], "--seed"),
    ("seed-negative", [*HUNGARY, "--seed", "-1"], "seed must be"),
    ("device-nonsense", [*HUNGARY, "--device", "nonsense"], "--device"),
    ("device-missing", [*TO_HUNGARY, "--strategy", "scratch", "--device", MISSING_DEVICE], "not available"),
    ("strategy-unknown", ["transfer", "--data", "heart:hungary", "--strategy", "magic"], "unknown strategy"),
    ("backbone-unknown", [*HUNGARY, "--backbone", "nosuchnet"], "nosuchnet"),
    ("backbone-wrong-modality", [*HUNGARY, "--backbone", "resnet18"], "resnet18"),
    ("option-unknown", [*HUNGARY, "--bogus"], "unknown option --bogus"),
    ("option-missing-value", ["transfer", "--data"], "--data"),
    ("option-required-missing", ["transfer", "--strategy", "full"], "missing option --data"),
    ("argument-extra", [*HUNGARY, "surplus"], "surplus"),
    ("command-unknown", ["trasnfer", "--data", "heart:hungary"], "no such command"),
    ("pretrain-method-unknown", ["pretrain", "--data", "heart:cleveland", "--method", "byol"], "--method"),
    ("pretrain-ssl-option-supervised", ["pretrain", "--data", "heart:cleveland", "--temperature", "0.5"],
     "--temperature"),
    ("shift-site-unknown", ["shift", "--source", "heart:cleveland", "--target", "heart:mars"], "unknown heart site"),
    ("shift-permutations-negative", ["shift", "--source", "heart:cleveland", "--target", "heart:va",
                                     "--permutations", "-1"], "--permutations"),
    # clinical evaluation options (issue 13): refused before any training, naming the option
    ("threshold-sens-over-one", [*HUNGARY, "--threshold", "sens=1.5"], "sens=1.5"),
    ("threshold-spec-zero", [*HUNGARY, "--threshold", "spec=0"], "spec=S needs S between 0 and 1"),
    ("threshold-one", [*HUNGARY, "--threshold", "1"], "strictly between 0 and 1"),
    ("threshold-a-word", [*HUNGARY, "--threshold", "best"], "--threshold"),
    ("threshold-prior-on-binary", [*HUNGARY, "--threshold", "prior"], "binary"),
    ("threshold-youden-on-multiclass", ["transfer", "--data", "csv:data/patients3.csv", *CSV, "--threshold",
                                        "youden"], "multiclass"),
    ("positive-unknown-class", [*HUNGARY, "--positive", "sick"], "not a class of heart:hungary"),
    ("positive-on-multiclass", ["transfer", "--data", "csv:data/patients3.csv", *CSV, "--positive", "1"],
     "binary tasks"),
    ("calibrate-unknown", [*HUNGARY, "--calibrate", "magic"], "--calibrate"),
    ("calibrate-platt-on-multiclass", ["transfer", "--data", "csv:data/patients3.csv", *CSV, "--calibrate",
                                       "platt"], "platt"),
    ("class-weight-unknown", [*HUNGARY, "--class-weight", "heavy"], "--class-weight"),
    ("sampler-unknown", [*HUNGARY, "--sampler", "random"], "--sampler"),
    ("id-not-a-column", ["transfer", "--data", "csv:data/patients.csv", *CSV, "--id", "nope"], "nope"),
    ("drop-not-a-column", ["transfer", "--data", "csv:data/patients.csv", *CSV, "--drop", "nope"], "nope"),
    ("id-on-heart", [*HUNGARY, "--id", "age"], "--id"),
    ("csv-identifier-as-feature", ["transfer", "--data", "csv:data/with_ids.csv", *CSV], "--id"),
    ("yaml-bad-threshold", ["experiment", "yaml/bad_threshold.yaml", "--quiet"], "threshold"),
    ("evaluate-split-bogus", ["evaluate", "run", "--split", "everything"], "all"),
    # weights and sources
    ("weights-missing", [*TO_HUNGARY, "--strategy", "full", "--source", "weights/missing.safetensors"],
     "missing.safetensors"),
    ("weights-truncated", [*TO_HUNGARY, "--strategy", "full", "--source", "weights/truncated.safetensors"],
     "truncated.safetensors"),
    ("weights-pth-not-a-state-dict", [*TO_HUNGARY, "--strategy", "full", "--source", "weights/notdict.pth"],
     "notdict.pth"),
    ("weights-truncated-with-backbone", [*TO_HUNGARY, "--strategy", "full", "--backbone", "mlp",
                                         "--source", "weights/truncated.safetensors"], "truncated.safetensors"),
    ("weights-pth-not-a-state-dict-with-backbone", [*TO_HUNGARY, "--strategy", "full", "--backbone", "mlp",
                                                    "--source", "weights/notdict.pth"], "notdict.pth"),
    ("weights-of-another-architecture", [*TO_HUNGARY, "--strategy", "full", "--backbone", "mlp:8",
                                         "--source", "weights/mlp.safetensors"], "mlp.safetensors"),
    ("source-run-corrupt-model-json", [*TO_HUNGARY, "--strategy", "full", "--source", "badjson"], "model.json"),
    ("source-run-incomplete-model-json", [*TO_HUNGARY, "--strategy", "full", "--source", "partialjson"],
     "model.json"),
    ("source-table-on-images", ["transfer", "--data", "folder:img/grey", "--source", "run", "--strategy", "full",
                                "--epochs", "1", "--quiet"], "tabular"),
    ("source-imagenet-unknown", [*TO_HUNGARY, "--strategy", "full", "--source", "imagenet:nosuchnet"],
     "nosuchnet"),
    ("source-stack-of-one", ["transfer", "--data", "folder:img/grey", "--source", "stack:imagenet:efficientnet_lite0",
                             "--strategy", "linear-probe", "--quiet"], "two or more sources"),
    ("source-stack-of-a-dataset", ["transfer", "--data", "folder:img/grey", "--strategy", "linear-probe", "--quiet",
                                   "--source", "stack:imagenet:efficientnet_lite0+heart:cleveland"],
     "pretrain a source dataset first"),
    # outputs
    ("out-exists", [*HUNGARY, "--out", "run"], "already exists"),
    ("out-read-only", [*HUNGARY, "--out", "ro/new-run"], "ro"),
    ("out-under-a-file", [*HUNGARY, "--out", "existing.csv/new-run"], "existing.csv"),
    ("pretrain-out-exists", ["pretrain", "--data", "heart:cleveland", "--out", "run", "--quiet"], "already exists"),
    ("shift-out-exists", ["shift", "--source", "heart:cleveland", "--target", "heart:va", "--out", "run"],
     "already exists"),
    ("evaluate-json-exists", ["evaluate", "run", "--json", "existing.json"], "already exists"),
    ("evaluate-json-no-folder", ["evaluate", "run", "--json", "nodir/metrics.json"], "nodir"),
    ("predict-out-exists", ["predict", "run", "heart:va", "--out", "existing.csv"], "already exists"),
    ("predict-out-no-folder", ["predict", "run", "heart:va", "--out", "nodir/p.csv"], "nodir"),
    ("experiment-out-other-experiment", ["experiment", "yaml/other.yaml", "--out", "exp", "--quiet"], "--overwrite"),
    # experiment YAML
    ("yaml-missing", ["experiment", "yaml/nofile.yaml", "--quiet"], "nofile.yaml"),
    ("yaml-unparsable", ["experiment", "yaml/unparsable.yaml", "--quiet"], "unparsable.yaml"),
    ("yaml-not-a-mapping", ["experiment", "yaml/list.yaml", "--quiet"], "list.yaml"),
    ("yaml-empty", ["experiment", "yaml/empty.yaml", "--quiet"], "empty.yaml"),
    ("yaml-unknown-key", ["experiment", "yaml/unknown_key.yaml", "--quiet"], "colour"),
    ("yaml-bad-budget", ["experiment", "yaml/bad_budget.yaml", "--quiet"], "budget"),
    ("yaml-seeds-zero", ["experiment", "yaml/seeds_zero.yaml", "--quiet"], "seeds"),
    ("yaml-patience-zero", ["experiment", "yaml/patience_zero.yaml", "--quiet"], "patience"),
    ("yaml-unknown-strategy", ["experiment", "yaml/unknown_strategy.yaml", "--quiet"], "unknown strategy"),
    ("yaml-name-absolute", ["experiment", "yaml/name_absolute.yaml", "--quiet"], "name"),
    ("yaml-name-dotdot", ["experiment", "yaml/name_dotdot.yaml", "--quiet"], "name"),
    ("experiment-jobs-zero", ["experiment", "yaml/exp.yaml", "--out", "exp", "--jobs", "0"], "--jobs"),
    # evaluate
    ("evaluate-no-such-run", ["evaluate", "no-such-run"], "not a medtransfer run"),
    ("evaluate-split-holdout", ["evaluate", "run", "--split", "holdout"], "split"),
    ("evaluate-other-modality", ["evaluate", "run", "--data", "folder:img/grey"], "tabular"),
    ("evaluate-class-mismatch", ["evaluate", "csvrun", "--data", "csv:data/patients3.csv"], "class mismatch"),
    ("evaluate-corrupt-model-json", ["evaluate", "badjson"], "model.json"),
    ("evaluate-incomplete-model-json", ["evaluate", "partialjson"], "model.json"),
    ("evaluate-no-weights", ["evaluate", "noweights"], "model.safetensors"),
    # predict
    ("predict-no-such-input", ["predict", "run", "data/nofile.csv"], "nofile.csv"),
    ("predict-csv-missing-columns", ["predict", "csvrun", "data/missing_cols.csv"], "missing"),
    ("predict-folder-without-images", ["predict", "greyrun", "img/not_images"], "not_images"),
    ("predict-images-for-a-table", ["predict", "run", "img/grey"], "img/grey"),
    ("predict-no-such-run", ["predict", "no-such-run", "data/patients.csv"], "not a medtransfer run"),
    ("predict-unknown-site", ["predict", "run", "heart:mars"], "unknown heart site"),
]


def cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`python -m medtransfer.cli ARGS` in a new interpreter."""
    env = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "medtransfer.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def cli_forked(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`python -m medtransfer.cli ARGS` in a process forked from a server that has already imported torch
    and medtransfer: the same module run as __main__, exit code and stderr, without the 2-3 s of imports
    per case that would make 90 cases take minutes on two cores."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["medtransfer.cli", "medtransfer.api", "medtransfer.experiment"])
    out, err = cwd.parent / f"{cwd.name}.stdout", cwd.parent / f"{cwd.name}.stderr"
    child = context.Process(target=run_module_as_main, args=(args, str(cwd), str(out), str(err)))
    child.start()
    child.join(300)
    if child.exitcode is None:
        child.kill()
    # The forkserver reports a child's exit status over a pipe and says 255 when that read fails (seen
    # once under the thread pool); the code the CLI exited with is also written beside its output.
    code = out.with_suffix(".code")
    return subprocess.CompletedProcess(args, int(code.read_text()) if code.exists() else child.exitcode,
                                       out.read_text(), err.read_text())


def run_module_as_main(args: list[str], cwd: str, out: str, err: str) -> None:
    """What `python -m medtransfer.cli ARGS` does, in this process, with stdout/stderr into files."""
    os.chdir(cwd)
    os.environ["COLUMNS"] = "200"
    for fd, path in ((1, out), (2, err)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    sys.argv = ["medtransfer", *args]
    sys.modules.pop("medtransfer.cli", None)  # run as __main__ afresh, as -m does
    code = 0
    try:
        runpy.run_module("medtransfer.cli", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    Path(out).with_suffix(".code").write_text(str(code))
    os._exit(code)


def write_images(folder: Path, colour: tuple | None, n: int = 6) -> None:
    """n small PNGs: grey (colour None) or one RGB colour, with noise so that classes differ."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(folder.name))
    for i in range(n):
        noise = rng.integers(0, 60, (16, 16))
        if colour is None:
            Image.fromarray((noise + 40 * (folder.name == "b")).astype(np.uint8), "L").save(folder / f"{i}.png")
        else:
            pixels = np.clip(np.array(colour)[None, None] + noise[..., None], 0, 255).astype(np.uint8)
            Image.fromarray(pixels, "RGB").save(folder / f"{i}.png")


def write_tables(data: Path) -> None:
    import pandas as pd

    rng = np.random.default_rng(0)
    n = 80
    y = np.arange(n) % 2
    frame = pd.DataFrame({"age": rng.normal(55, 8, n).round(1) + 5 * y, "sex": rng.choice(["F", "M"], n),
                          "chol": rng.normal(230, 30, n).round(), "y": y})
    data.mkdir()
    frame.to_csv(data / "patients.csv", index=False)
    frame.assign(y=np.arange(n) % 3).to_csv(data / "patients3.csv", index=False)
    frame.head(0).to_csv(data / "header_only.csv", index=False)
    frame.assign(y=1).to_csv(data / "one_class.csv", index=False)
    frame.assign(patient=[f"P{i:04d}" for i in range(n)]).to_csv(data / "with_ids.csv", index=False)
    pd.DataFrame({"height": [170, 180], "weight": [70, 80]}).to_csv(data / "missing_cols.csv", index=False)


SMALL = "seeds: 1\ntrain: {epochs: 1}\nn_boot: 10\n"  # should a bad YAML run after all, it runs fast
YAMLS = {
    "exp": "name: exp\ntargets: [heart:hungary]\nstrategies: [target-only]\nbudgets: [all]\nseeds: 1\n",
    "other": "name: other\ntargets: [heart:va]\nstrategies: [target-only]\nbudgets: [10]\n" + SMALL,
    "unparsable": "name: x\ntargets: [heart:va\nstrategies: {\n",
    "bad_threshold": "name: x\ntargets: [heart:va]\nstrategies: [target-only]\nthreshold: sens=2\n" + SMALL,
    "list": "- heart:va\n- heart:hungary\n",
    "empty": "",
    "unknown_key": "name: x\ntargets: [heart:va]\nstrategies: [target-only]\ncolour: blue\n" + SMALL,
    "bad_budget": "name: x\ntargets: [heart:va]\nstrategies: [target-only]\nbudgets: [-5]\n" + SMALL,
    "seeds_zero": "name: x\ntargets: [heart:va]\nstrategies: [target-only]\nseeds: 0\n",
    "patience_zero": "name: x\ntargets: [heart:va]\nstrategies: [target-only]\nseeds: 1\ntrain: {patience: 0}\n",
    "unknown_strategy": "name: x\ntargets: [heart:va]\nstrategies: [magic]\n" + SMALL,
    "name_absolute": "name: {root}/elsewhere\ntargets: [heart:va]\nstrategies: [target-only]\n" + SMALL,
    "name_dotdot": "name: ../elsewhere\ntargets: [heart:va]\nstrategies: [target-only]\n" + SMALL,
}


def build_fixtures(root: Path) -> None:
    """Everything the cases point at: runs, an experiment, tables, image folders, weights, YAMLs."""
    write_tables(root / "data")
    for name in ("a", "b"):
        write_images(root / "img" / "grey" / name, None)
    write_images(root / "img" / "rgb" / "red", (200, 30, 30))
    write_images(root / "img" / "rgb" / "green", (30, 200, 30))
    write_images(root / "img" / "one_class" / "only", None)
    for name in ("a", "b"):
        (root / "img" / "broken" / name).mkdir(parents=True)
        (root / "img" / "not_images" / name).mkdir(parents=True)
        for i in range(6):
            (root / "img" / "broken" / name / f"{i}.png").write_bytes(b"not a png at all" * 4)
            (root / "img" / "not_images" / name / f"{i}.txt").write_text("a note, not an image\n")
    (root / "yaml").mkdir()
    for name, text in YAMLS.items():
        (root / "yaml" / f"{name}.yaml").write_text(text.replace("{root}", str(root)))
    builds = [["transfer", "--data", "heart:hungary", *RUN, "--epochs", "5", "--out", "run"],
              ["transfer", "--data", "csv:data/patients.csv", *CSV, "--epochs", "5", "--out", "csvrun"],
              ["transfer", "--data", "folder:img/grey", *GREY, "--out", "greyrun"],
              ["experiment", "yaml/exp.yaml", "--out", "exp", "--quiet"]]
    with ThreadPoolExecutor(len(builds)) as pool:
        for result in pool.map(lambda args: cli(args, root), builds):
            assert result.returncode == 0, result.stderr
    for name, change in (("badjson", "{not json"), ("partialjson", json.dumps({"task": "binary"})),
                         ("noweights", None)):
        shutil.copytree(root / "run", root / name)
        if change is None:
            (root / name / "model.safetensors").unlink()
        else:
            (root / name / "model.json").write_text(change)
    (root / "weights").mkdir()
    weights = (root / "run" / "model.safetensors").read_bytes()
    (root / "weights" / "truncated.safetensors").write_bytes(weights[:40])
    (root / "weights" / "mlp.safetensors").write_bytes(weights)  # bare weights: no model.json beside them
    torch.save([1, 2, 3], root / "weights" / "notdict.pth")
    (root / "existing.json").write_text('{"kept": true}\n')
    (root / "existing.csv").write_text("input,prob\nkept,1\n")
    (root / "ro").mkdir()
    (root / "ro").chmod(0o555)


def checksums(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def outcomes(request, tmp_path_factory) -> dict:
    """Each selected case run in its own copy of the fixtures: (result, files changed or removed)."""
    master = tmp_path_factory.mktemp("fixtures")
    build_fixtures(master)
    base = tmp_path_factory.mktemp("cases")
    selected = [item.callspec.params["case"] for item in request.session.items
                if item.module is request.module and "case" in getattr(getattr(item, "callspec", None), "params", {})]

    def run(case):
        folder = base / case[0]
        shutil.copytree(master, folder, symlinks=True)
        into_ro = any(arg.startswith("ro/") for arg in case[1])
        with read_only(folder / "ro") if into_ro else contextlib.nullcontext(True) as locked:
            if not locked:
                return case[0], None
            before = checksums(folder)
            result = cli_forked(case[1], folder)
            after = checksums(folder)
        return case[0], (result, sorted(p for p in before if after.get(p) != before[p]))

    with ThreadPoolExecutor(max(2, min(4, os.cpu_count() or 1))) as pool:
        return dict(pool.map(run, selected))


@contextlib.contextmanager
def read_only(folder: Path):
    """Yield whether `folder` is read-only (mode 555): root writes there anyway unless the folder is also
    made immutable (chattr +i, where the file system supports it)."""
    immutable = os.geteuid() == 0 and shutil.which("chattr") is not None and \
        subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
    try:
        yield os.geteuid() != 0 or immutable
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], capture_output=True)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(case, outcomes):
    name, args, fragment = case
    if outcomes[name] is None:
        pytest.skip("no read-only folder here: running as root without chattr +i")
    result, changed = outcomes[name]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    shown = f"exit {result.returncode}, stderr:\n{result.stderr[-1500:]}"
    assert "Traceback" not in result.stderr, shown
    assert len(lines) == 1 and lines[0].startswith("error:"), shown
    assert fragment in lines[0], shown
    assert result.returncode == 2, shown
    assert not changed, f"files changed: {changed}"


def test_there_are_at_least_60_cases():
    assert len(CASES) >= 60 and len({c[0] for c in CASES}) == len(CASES)
