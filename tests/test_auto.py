"""`--strategy auto` (the transfer method chosen on validation, never on test) and layer-wise
learning-rate decay for full / lp-ft / l2-sp, on tiny generated data and the built-in heart cohorts."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

import medtransfer as mt
from medtransfer.data.base import Split, TaskDataset
from medtransfer.errors import MedTransferError
from medtransfer.evaluation.selection import selection_key
from medtransfer.models.backbones import create_model, default_spec, describe
from medtransfer.models.inference import predict_proba
from medtransfer.strategies import STRATEGIES, Strategy, TransferContext, get_strategy
from medtransfer.strategies import auto as auto_module
from medtransfer.strategies.auto import Auto
from medtransfer.strategies.full import BACKBONE_LR_RATIO, param_groups
from medtransfer.strategies.linear_probe import LinearProbe
from medtransfer.defaults import TRAINING
from medtransfer.experiment.config import ExperimentConfig, TrainSettings
from medtransfer.experiment.grid import grid, settings_of
from medtransfer.pipeline.request import TrainOptions, layer_decay_option
from medtransfer.training.loop import TrainConfig, pretraining_settings

N_FEATURES = 5
FEATURES = [f"f{i}" for i in range(N_FEATURES)]
CLASSES = ["no", "yes"]
ARCH = describe("mlp:16,16", "tabular", 0, N_FEATURES)
SPEC = default_spec("tabular", 0, FEATURES)
TAGS = ("needs_source_model", "needs_source_data", "needs_unlabelled_target", "needs_labels", "baseline",
        "uses_backbone")


def _split(n: int, g: torch.Generator, shift: float = 0.0) -> Split:
    x = torch.randn(n, N_FEATURES, generator=g) + shift
    logit = 2.0 * (x[:, 0] - shift) + 1.0 * (x[:, 1] - shift) - 0.5 * (x[:, 2] - shift)
    return Split(x, (logit + 1.0 * torch.randn(n, generator=g) > 0).long())


def _dataset(name: str, n_train: int, seed: int, shift: float = 0.0) -> TaskDataset:
    g = torch.Generator().manual_seed(seed)
    return TaskDataset(name, "tabular", "binary", list(CLASSES), _split(n_train, g, shift), _split(30, g, shift),
                       _split(100, g, shift))


def _config(**kw) -> TrainConfig:
    return TrainConfig(**{**dict(epochs=6, batch_size=16, lr=1e-2, patience=3, augment=False, seed=0,
                                 accelerator="cpu", progress=False), **kw})


class Poisoned:
    """A test split that fails the test the moment anything reads it."""

    def __getattr__(self, name):
        raise AssertionError(f"the test split was read ({name})")

    def __len__(self):
        raise AssertionError("the test split was read (len)")


@pytest.fixture(scope="module")
def source_model():
    source = _dataset("source-site", 160, seed=21, shift=0.4)
    ctx = TransferContext(source, _config(epochs=4, batch_size=32, lr=2e-2), ARCH, SPEC)
    return get_strategy("scratch").run(ctx).eval()


@pytest.fixture(scope="module")
def target() -> TaskDataset:
    """Budgeted-looking target whose test split may not be read by any choice."""
    return _dataset("target-site", 24, seed=22).with_splits(test=Poisoned())


def _ctx(target, source_model, **kw) -> TransferContext:
    return TransferContext(**{**dict(target=target, config=_config(), architecture=ARCH, spec=SPEC,
                                     source_model=source_model, source_classes=None), **kw})


def _key(model, data: TaskDataset) -> tuple:
    return selection_key(data.val.y.numpy(), predict_proba(model, data.val.x, data.task), data.task)


# ----------------------------------------------------------------------------- auto: registry and tags


def test_auto_is_registered_with_the_tags_of_its_candidates():
    assert STRATEGIES["auto"] is Auto and isinstance(get_strategy("auto"), Strategy)
    assert set(Auto.candidates) == {"linear-probe", "lp-ft", "full", "l2-sp"}
    for name in Auto.candidates:
        cls = STRATEGIES.lookup(name)  # names, looked up in the registry
        assert all(getattr(Auto, tag) == getattr(cls, tag) for tag in TAGS), name
    assert Auto.accepts("linear") and Auto.accepts(None)


def test_auto_without_a_source_is_one_clear_error(target):
    with pytest.raises(MedTransferError, match="strategy 'auto' needs --source"):
        Auto().run(_ctx(target, None))


# ----------------------------------------------------------------------------- auto: the choice


def test_auto_keeps_the_candidate_with_the_best_validation_key_and_never_reads_test(target, source_model):
    """Each candidate run on its own (same seed, fresh source copy) gives the key auto recorded; auto keeps
    the argmax (ties to the earlier) and returns exactly that candidate's model and training."""
    pristine = {k: v.clone() for k, v in source_model.state_dict().items()}
    alone = {}
    for name in Auto.candidates:
        ctx = _ctx(target, source_model)
        model = get_strategy(name).run(ctx)
        alone[name] = (_key(model, target), model, ctx.fit_result)
    ctx = _ctx(target, source_model)
    model = Auto().run(ctx)
    notes = ctx.notes
    expected = max(Auto.candidates, key=lambda n: (alone[n][0], -Auto.candidates.index(n)))
    assert notes["chosen"] == expected
    assert set(notes["candidates"]) == set(Auto.candidates)
    for name, (key, _, fit) in alone.items():
        entry = notes["candidates"][name]
        assert entry["val_score"] == pytest.approx(key[0])
        assert entry["val_balanced_accuracy"] == pytest.approx(key[1])
        assert entry["val_log_loss"] == pytest.approx(-key[2])
        assert ("best_epoch" in entry) == (fit is not None)  # linear-probe trains no loop
    chosen_model, chosen_fit = alone[expected][1], alone[expected][2]
    for k, v in chosen_model.state_dict().items():
        assert torch.allclose(v, model.state_dict()[k], atol=1e-6), k
    if chosen_fit is None:
        assert ctx.fit_result is None
    else:
        assert (ctx.fit_result.best_epoch, ctx.fit_result.best_score) == (chosen_fit.best_epoch, chosen_fit.best_score)
    assert all(torch.equal(v, source_model.state_dict()[k]) for k, v in pristine.items())  # source untouched


@pytest.mark.parametrize("positives", [2, 10])
def test_a_choice_on_a_thin_validation_split_is_warned(target, source_model, positives):
    """2 'yes' among 30 validation examples: the run is told its choice is close to chance; 10: not."""
    val = replace(target.val, y=torch.tensor([1] * positives + [0] * (30 - positives)))
    ctx = _ctx(target.with_splits(val=val), source_model)
    Auto().run(ctx)
    thin = [w for w in ctx.warnings if w.startswith("strategy auto chose")]
    if positives < 10:
        assert thin == [f"strategy auto chose {ctx.notes['chosen']} on 2 validation examples of 'yes' (30 in all): "
                        "a validation score over so few examples takes only a handful of values, so the choice is "
                        "close to chance; compare the candidates' validation scores in config.json "
                        "(strategy_notes), and give validation more labels before relying on it"]
    else:
        assert thin == []


def _forced_keys(monkeypatch, keys: dict[str, tuple]):
    """selection_key in auto returns the given key for each candidate, in candidate order."""
    order = iter(keys.values())
    monkeypatch.setattr(auto_module, "selection_key", lambda y, prob, task: next(order))


@pytest.mark.parametrize("best", ["linear-probe", "full"])
def test_fit_result_is_the_chosen_candidates(monkeypatch, target, source_model, best):
    keys = {"linear-probe": (0.7, 0.6, -0.6), "full": (0.7, 0.6, -0.5)}
    if best == "linear-probe":
        keys["linear-probe"] = (0.8, 0.5, -0.9)  # the AUC decides before the tie-breakers
    _forced_keys(monkeypatch, keys)
    monkeypatch.setattr(Auto, "candidates", tuple(keys))
    ctx = _ctx(target, source_model)
    Auto().run(ctx)
    assert ctx.notes["chosen"] == best
    if best == "linear-probe":  # full trained after it; its training must not be reported as the run's
        assert ctx.fit_result is None
    else:
        assert ctx.fit_result.best_epoch == ctx.notes["candidates"]["full"]["best_epoch"]


def test_a_tie_goes_to_the_earlier_candidate(monkeypatch, target, source_model):
    class Copy(LinearProbe):
        name = "test-lp-copy"

    monkeypatch.setitem(STRATEGIES, Copy.name, Copy)
    monkeypatch.setattr(Auto, "candidates", (Copy.name, "linear-probe"))
    ctx = _ctx(target, source_model)
    Auto().run(ctx)
    scores = {n: e["val_score"] for n, e in ctx.notes["candidates"].items()}
    assert scores[Copy.name] == scores["linear-probe"] and ctx.notes["chosen"] == Copy.name


def test_failing_candidates_are_skipped_with_their_reason(monkeypatch, target, source_model):
    class Fails(Strategy):
        name = "test-fails"
        summary = "raises what a strategy raises"

        def run(self, ctx):
            raise MedTransferError("this candidate cannot run here")

    class Notes(LinearProbe):
        name = "test-notes"

        def run(self, ctx):
            ctx.notes["decided"] = "something"
            return super().run(ctx)

    monkeypatch.setitem(STRATEGIES, Fails.name, Fails)
    monkeypatch.setitem(STRATEGIES, Notes.name, Notes)
    monkeypatch.setattr(Auto, "candidates", (Fails.name, Notes.name))
    ctx = _ctx(target, source_model)
    Auto().run(ctx)
    assert ctx.notes["chosen"] == Notes.name
    assert ctx.notes["candidates"][Fails.name] == {"skipped": "this candidate cannot run here"}
    assert ctx.notes["candidates"][Notes.name]["notes"]["decided"] == "something"
    assert "decided" not in ctx.notes and "feature_scaling" not in ctx.notes  # a candidate's notes stay under its own name

    monkeypatch.setattr(Auto, "candidates", (Fails.name,))
    with pytest.raises(MedTransferError, match="no candidate could run.*test-fails: this candidate cannot run"):
        Auto().run(_ctx(target, source_model))


def test_a_bug_in_a_candidate_is_not_swallowed(monkeypatch, target, source_model):
    class Broken(LinearProbe):
        name = "test-broken"

        def run(self, ctx):
            raise RuntimeError("a bug")

    monkeypatch.setitem(STRATEGIES, Broken.name, Broken)
    monkeypatch.setattr(Auto, "candidates", ("linear-probe", Broken.name))
    with pytest.raises(RuntimeError, match="a bug"):
        Auto().run(_ctx(target, source_model))


def test_a_candidate_with_non_finite_probabilities_is_skipped(monkeypatch, target, source_model):
    class Diverged(LinearProbe):
        name = "test-nan"

        def run(self, ctx):
            model = super().run(ctx)
            model.head.bias.data[:] = float("nan")
            return model

    monkeypatch.setitem(STRATEGIES, Diverged.name, Diverged)
    monkeypatch.setattr(Auto, "candidates", (Diverged.name, "linear-probe"))
    ctx = _ctx(target, source_model)
    Auto().run(ctx)
    assert ctx.notes["chosen"] == "linear-probe"
    assert "non-finite" in ctx.notes["candidates"][Diverged.name]["skipped"]


# ----------------------------------------------------------------------------- auto: through the pipeline

HEART = dict(budget=20, epochs=15, source_epochs=15, n_boot=10, progress=False)


def _without_seconds(notes: dict) -> dict:
    return {k: ({n: {f: v for f, v in e.items() if f != "seconds"} for n, e in v.items()} if k == "candidates" else v)
            for k, v in notes.items()}


def test_auto_on_heart_records_every_candidate_and_ignores_test_labels(tmp_path, monkeypatch):
    run = mt.transfer("heart:hungary", "auto", "heart:cleveland", out=tmp_path / "auto", **HEART)
    notes = json.loads((run.out / "config.json").read_text())["strategy_notes"]
    assert set(notes["candidates"]) == set(Auto.candidates) and notes["chosen"] in Auto.candidates
    keys = {n: (e["val_score"], e["val_balanced_accuracy"], -e["val_log_loss"]) for n, e in notes["candidates"].items()}
    assert keys[notes["chosen"]] == max(keys.values())
    assert _key(run.model, run.dataset)[0] == pytest.approx(notes["candidates"][notes["chosen"]]["val_score"])
    chosen = notes["candidates"][notes["chosen"]]
    assert run.metrics["fit"].get("best_epoch") == chosen.get("best_epoch")
    # 20 labels leave 20 validation examples, fewer than 10 of one class: the run says its choice is shaky
    thin = [w for w in run.warnings if w.startswith(f"strategy auto chose {notes['chosen']} on ")]
    assert len(thin) == 1 and "close to chance" in thin[0]
    assert thin[0] in json.loads((run.out / "metrics.json").read_text())["warnings"]

    # The same run with the test labels flipped: the same choice and validation numbers, and test AUC
    # mirrored (1 - AUC), which shows the flipped labels reached the evaluation and nothing before it.
    import medtransfer.pipeline.run as run_module

    budget = run_module.apply_budget

    def flipped(dataset, *args):
        budgeted = budget(dataset, *args)
        return budgeted.with_splits(test=replace(budgeted.test, y=1 - budgeted.test.y))

    monkeypatch.setattr(run_module, "apply_budget", flipped)
    garbage = mt.transfer("heart:hungary", "auto", "heart:cleveland", save=False, **HEART)
    assert _without_seconds(garbage.config["strategy_notes"]) == _without_seconds(notes)
    assert garbage.metrics["test"]["auc"]["value"] == pytest.approx(1 - run.metrics["test"]["auc"]["value"], abs=1e-6)


def write_images(folder) -> None:
    rng = np.random.default_rng(0)
    for label, shift in (("a", 0), ("b", 90)):
        (folder / label).mkdir(parents=True)
        for i in range(10):
            Image.fromarray((rng.integers(0, 100, (16, 16)) + shift).astype(np.uint8), "L").save(
                folder / label / f"{i}.png")


def test_auto_on_a_tiny_image_folder(tmp_path):
    write_images(tmp_path / "images")
    options = dict(backbone="test_resnet", image_size=16, epochs=1, batch_size=4, progress=False, n_boot=10)
    source = mt.transfer(f"folder:{tmp_path / 'images'}", "scratch", out=tmp_path / "source", **options)
    run = mt.transfer(f"folder:{tmp_path / 'images'}", "auto", str(source.out), save=False, **options)
    notes = run.config["strategy_notes"]
    assert set(notes["candidates"]) == set(Auto.candidates)
    assert all("val_score" in e for e in notes["candidates"].values())


# ----------------------------------------------------------------------------- layer-wise learning-rate decay


def _image_model():
    return create_model(describe("test_resnet", "image2d", 1), default_spec("image2d", 1, None, 16), 2)


def test_no_decay_is_todays_flat_groups():
    model = _image_model()
    groups = param_groups(model, 1e-3, 1e-3, None)
    today = [{"params": list(model.backbone.parameters()), "lr": 1e-3 * BACKBONE_LR_RATIO},
             {"params": list(model.head.parameters()), "lr": 1e-3}]
    assert [(g["params"], g["lr"]) for g in groups] == [(g["params"], g["lr"]) for g in today]


def test_layer_decay_gives_each_stage_its_rate():
    model = _image_model()
    stages = model.stages()
    assert stages == ["layer1", "layer2", "layer3", "layer4"]
    groups = param_groups(model, 1e-2, 1e-2, 0.5)
    assert [g["stage"] for g in groups] == ["stem", *stages, "head"]
    assert [g["depth"] for g in groups] == [5, 4, 3, 2, 1, 0]
    assert [g["lr"] for g in groups] == pytest.approx([1e-2 * 0.5 ** d for d in (5, 4, 3, 2, 1, 0)])
    names = {id(p): n for n, p in model.named_parameters()}
    for group in groups[1:-1]:  # every parameter of a stage in that stage's group
        assert all(names[id(p)].startswith(f"backbone.{group['stage']}.") for p in group["params"])
    assert all(names[id(p)].startswith(("backbone.conv1", "backbone.bn1")) for p in groups[0]["params"])
    every = [id(p) for g in groups for p in g["params"]]
    assert sorted(every) == sorted(id(p) for p in [*model.backbone.parameters(), *model.head.parameters()])


def test_weights_between_and_after_stages_join_the_next_and_last_stage():
    """EfficientNet's feature levels skip blocks.3 and blocks.5, and conv_head follows the last one."""
    model = create_model(describe("efficientnet_lite0", "image2d", 3), default_spec("image2d", 3, None, 32), 2)
    groups = {g["stage"]: g for g in param_groups(model, 1.0, 1.0, 0.5)}
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)].split(".")[1] for p in groups["stem"]["params"]} == {"conv_stem", "bn1"}
    assert any(names[id(p)].startswith("backbone.blocks.3.") for p in groups["blocks.4"]["params"])
    assert any(names[id(p)].startswith("backbone.conv_head") for p in groups["blocks.6"]["params"])


def _captured_groups(strategy: str, ctx: TransferContext) -> list[dict]:
    captured = []
    ctx.fit = lambda model, groups, **kw: captured.append(groups) or model  # noqa: ARG005
    get_strategy(strategy).run(ctx)
    return captured[-1]


@pytest.mark.parametrize("strategy", ["full", "l2-sp", "lp-ft"])
def test_a_run_sets_the_decay_through_its_config(monkeypatch, target, source_model, strategy):
    config = _config(lr=0.1)
    head_ratio = BACKBONE_LR_RATIO if strategy == "lp-ft" else 1.0
    flat = _captured_groups(strategy, _ctx(target, source_model, config=config))
    assert [g["lr"] for g in flat] == pytest.approx([0.1 * BACKBONE_LR_RATIO, 0.1 * head_ratio])  # today's

    config.layer_decay = 0.5
    decayed = _captured_groups(strategy, _ctx(target, source_model, config=config))
    head = 0.5 if strategy == "lp-ft" else 1.0  # lp-ft's fitted head moves as the stage under it
    assert [g["stage"] for g in decayed] == ["block0", "block1", "head"]  # mlp:16,16: two stages
    assert [g["lr"] for g in decayed] == pytest.approx([0.1 * 0.5 ** 2, 0.1 * 0.5, 0.1 * head])



@pytest.mark.parametrize("bad", [0, -0.5, 1.5, "half", True, float("nan")])
def test_a_bad_decay_is_one_clear_error(target, source_model, bad):
    """A TrainConfig built by hand gets the same check (layer_decay_value) as TrainOptions and the CLI."""
    config = _config()
    config.layer_decay = bad
    with pytest.raises(MedTransferError, match=r"layer_decay must be a number in \(0, 1\] \(1: every stage"):
        get_strategy("full").run(_ctx(target, source_model, config=config))


def test_layer_decay_trains_an_image_model(monkeypatch):
    """The groups reach the real loop's optimizer (through Fabric) with their rates, and training runs."""
    seen = []

    class Recording(torch.optim.AdamW):
        def __init__(self, groups, **kw):
            super().__init__(groups, **kw)
            seen.append([(g["stage"], g["lr"]) for g in self.param_groups])

    monkeypatch.setattr(torch.optim, "AdamW", Recording)
    data = TaskDataset("img", "image2d", "binary", list(CLASSES),
                       Split(torch.rand(16, 1, 16, 16), torch.arange(16) % 2),
                       Split(torch.rand(8, 1, 16, 16), torch.arange(8) % 2), Poisoned())
    source = _image_model()
    config = _config(epochs=1, batch_size=8, lr=1e-2, augment=True)
    config.layer_decay = 0.5
    ctx = TransferContext(data, config, source.architecture, source.spec, source, source_classes=list(CLASSES))
    get_strategy("full").run(ctx)
    assert ctx.fit_result.epochs_run == 1 and np.isfinite(ctx.fit_result.history[-1]["train_loss"])
    assert seen == [[(s, pytest.approx(1e-2 * 0.5 ** d)) for s, d in
                     (("stem", 5), ("layer1", 4), ("layer2", 3), ("layer3", 2), ("layer4", 1), ("head", 0))]]


def test_each_modality_gets_the_decay_chosen_for_it_and_flat_restores_the_old_rule():
    """Images and signals default to 0.7 (chosen on validation); volumes, tables and text stay flat."""
    defaults = {row: TrainOptions().config(row, 0).layer_decay for row in ("image2d", "signal", "image3d",
                                                                         "tabular", "text")}
    assert defaults == {"image2d": 0.7, "signal": 0.7, "image3d": None, "tabular": None, "text": None}
    assert TrainOptions(layer_decay="flat").config("image2d", 0).layer_decay is None
    assert TrainOptions(layer_decay=0.5).config("tabular", 0).layer_decay == 0.5
    assert [layer_decay_option(t) for t in (None, "flat", " FLAT", "0.7")] == [None, "flat", "flat", 0.7]
    with pytest.raises(MedTransferError, match=r"--layer-decay must be a number in \(0, 1\] or flat, got 'steep'"):
        layer_decay_option("steep")
    for bad in (0, 1.5, "steep", True):
        with pytest.raises(MedTransferError, match=r"layer_decay must be a number in \(0, 1\] \(.*\) or flat, got"):
            TrainOptions(layer_decay=bad)


def test_a_changed_default_makes_new_cells(monkeypatch):
    """A grid resumed after a default changed (here the layer decay) must not reuse cells trained by the old
    one: every cell id holds the whole defaults table, so all change, even where the grid sets the value."""
    config = ExperimentConfig(name="g", targets=["medmnist:breastmnist"], sources=["medmnist:organamnist"],
                              strategies=["scratch", "linear-probe", "full", "lp-ft", "l2-sp", "auto"],
                              budgets=["10%"], seeds=[0])
    fixed = config.model_copy(update={"train": TrainSettings(layer_decay=0.7)})

    def ids(cfg):
        return {c.strategy: c.id(settings_of(cfg)) for c in grid(cfg)}

    before, before_fixed = ids(config), ids(fixed)
    assert ids(config) == before  # stable while nothing changes
    monkeypatch.setitem(TRAINING, "image2d", TRAINING["image2d"] | {"layer_decay": 0.5})
    after, after_fixed = ids(config), ids(fixed)
    assert all(before[s] != after[s] for s in before) and all(before_fixed[s] != after_fixed[s] for s in before)
    assert TrainSettings(layer_decay="flat").layer_decay == "flat" and TrainSettings(layer_decay=0.5).layer_decay == 0.5
    for bad in (0, 1.5, "steep"):
        with pytest.raises(ValueError):
            TrainSettings(layer_decay=bad)


def test_a_source_pretraining_is_keyed_without_the_fine_tuning_decay():
    """Pretraining a source reads no layer decay: its cache key must not change with the default."""
    flat = pretraining_settings(TrainOptions(layer_decay="flat").config("image2d", 0), "cpu")
    assert pretraining_settings(TrainOptions().config("image2d", 0), "cpu") == flat
    assert flat["layer_decay"] is None and "progress" not in flat and flat["accelerator"] == "cpu"
