"""Transfer strategies on a tiny tabular task with a real signal: what each one trains, what it
starts from, that the logistic-regression ones match scikit-learn, and that all of them learn."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from medtransfer.data.base import Split, TaskDataset
from medtransfer.errors import MedTransferError
from medtransfer.models.backbones import create_model, default_spec, describe
from medtransfer.strategies import STRATEGIES, Strategy, TransferContext, get_strategy
from medtransfer.strategies.base import extract_features
from medtransfer.strategies.partial import Partial, unfreeze_last_stages
from medtransfer.evaluation.selection import selection_key
from medtransfer.training.loop import TrainConfig, predict_proba, selection_score

N_FEATURES = 5
FEATURES = [f"f{i}" for i in range(N_FEATURES)]
CLASSES = ["no", "yes"]
from medtransfer.defaults import C_GRID as GRID  # noqa: E402 - the C grid of fit_logistic_head
ALL_STRATEGIES = {"scratch", "linear-probe", "head", "partial", "full", "lp-ft", "l2-sp", "target-only",
                  "source-only", "pooled"}
TRAINED = sorted(ALL_STRATEGIES)
ADAPTATION = {"dann", "coral", "mmd", "prior-shift", "prior-shift-bbse", "source-model"}  # tests/test_adaptation.py
SELECTION = {"auto"}  # runs the others and keeps the best on validation: tests/test_auto.py
TEXT = {"lora", "tfidf-lr"}  # need a text encoder / raw texts: tests/test_text.py


def _split(n: int, g: torch.Generator, shift: float = 0.0) -> Split:
    x = torch.randn(n, N_FEATURES, generator=g) + shift
    logit = 2.0 * (x[:, 0] - shift) + 1.0 * (x[:, 1] - shift) - 0.5 * (x[:, 2] - shift)
    y = (logit + 0.5 * torch.randn(n, generator=g) > 0).long()
    return Split(x, y)


def _dataset(name: str, n_train: int, seed: int, shift: float = 0.0) -> TaskDataset:
    g = torch.Generator().manual_seed(seed)
    return TaskDataset(name, "tabular", "binary", list(CLASSES), _split(n_train, g, shift), _split(40, g, shift),
                       _split(200, g, shift))


def _config(**kw) -> TrainConfig:
    base = dict(epochs=8, batch_size=16, lr=1e-2, patience=4, augment=False, seed=0, accelerator="cpu",
                progress=False)
    base.update(kw)
    return TrainConfig(**base)


ARCH = describe("mlp:16,16", "tabular", 0, N_FEATURES)
SPEC = default_spec("tabular", 0, FEATURES)


@pytest.fixture(scope="module")
def source_data() -> TaskDataset:
    return _dataset("source-site", 160, seed=11, shift=0.3)


@pytest.fixture(scope="module")
def target() -> TaskDataset:
    return _dataset("target-site", 60, seed=12)


@pytest.fixture(scope="module")
def source_model(source_data):
    ctx = TransferContext(source_data, _config(epochs=4, batch_size=32, lr=2e-2, patience=4), ARCH, SPEC)
    model = get_strategy("scratch").run(ctx)
    assert ctx.fit_result.best_score > 0.85
    return model.eval()


def _ctx(target, source_model, source_data, **kw) -> TransferContext:
    fields = dict(target=target, config=_config(), architecture=ARCH, spec=SPEC, source_model=source_model,
                  source_data=source_data, source_classes=list(CLASSES))
    fields.update(kw)
    return TransferContext(**fields)


@pytest.fixture(scope="module")
def runs(target, source_model, source_data):
    """Every strategy run once on the same target; name -> (fitted model, its context). The source
    classes are unknown here, so transfer strategies start from a fresh head."""
    pristine = copy.deepcopy(source_model.state_dict())
    out = {}
    for name in TRAINED:
        ctx = _ctx(target, source_model, source_data, source_classes=None)
        out[name] = (get_strategy(name).run(ctx), ctx)
    # no strategy may touch the source model itself
    assert all(torch.equal(v, source_model.state_dict()[k]) for k, v in pristine.items())
    return out


def _params(module: torch.nn.Module, prefix: str) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items() if k.startswith(prefix)}


def _equal(a: dict, b: dict) -> bool:
    assert a.keys() == b.keys() and a
    return all(torch.equal(a[k], b[k]) for k in a)


def _all_differ(a: dict, b: dict) -> bool:
    assert a.keys() == b.keys() and a
    return all(not torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- registry


def test_every_registered_strategy_is_reachable():
    assert set(STRATEGIES) == ALL_STRATEGIES | ADAPTATION | SELECTION | TEXT
    for name in STRATEGIES:
        strategy = get_strategy(name)
        assert isinstance(strategy, Strategy) and strategy.name == name and strategy.summary


def test_unknown_strategy_lists_the_names():
    with pytest.raises(MedTransferError) as info:
        get_strategy("no-such-strategy")
    message = str(info.value)
    assert "no-such-strategy" in message
    assert all(name in message for name in STRATEGIES)


def test_transfer_strategies_need_a_source_model(target):
    ctx = _ctx(target, None, None)
    for name in ("linear-probe", "head", "partial", "full", "lp-ft"):
        with pytest.raises(MedTransferError, match="--source"):
            get_strategy(name).run(ctx)


# ----------------------------------------------------------------------------- what trains


def test_head_trains_only_the_head(runs, source_model):
    model, ctx = runs["head"]
    start = ctx.target_model("head")  # the fresh head it started from (seeded)
    assert _equal(_params(model, "backbone."), _params(source_model, "backbone."))
    assert _all_differ(_params(model, "head."), _params(start, "head."))
    assert ctx.fit_result.best_epoch > 0


def test_partial_trains_only_the_last_stage(runs, source_model):
    model, ctx = runs["partial"]
    assert model.stages() == ["block0", "block1"]
    assert _equal(_params(model, "backbone.block0."), _params(source_model, "backbone.block0."))
    assert _all_differ(_params(model, "backbone.block1."), _params(source_model, "backbone.block1."))
    assert _all_differ(_params(model, "head."), _params(ctx.target_model("partial"), "head."))
    assert ctx.fit_result.best_epoch > 0


def test_partial_two_stages_trains_the_whole_mlp(target, source_model, source_data):
    class PartialTwo(Partial):
        stages = 2

    model = PartialTwo().run(_ctx(target, source_model, source_data, source_classes=None))
    assert _all_differ(_params(model, "backbone."), _params(source_model, "backbone."))


def test_partial_stage_bounds(source_model):
    model = copy.deepcopy(source_model)
    for k in (0, 3):
        with pytest.raises(MedTransferError, match="between 1 and 2"):
            unfreeze_last_stages(model, k)


def _resnet18():
    torch.manual_seed(0)
    return create_model(describe("resnet18", "image2d", 1), default_spec("image2d", 1, image_size=32), 2)


def test_partial_stages_on_a_timm_resnet():
    model = _resnet18()
    frozen = unfreeze_last_stages(model, 1)
    trainable = {n for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("layer4.") for n in trainable)
    assert all(p.requires_grad for n, p in model.backbone.named_parameters() if n.startswith("layer4."))
    assert model.backbone.conv1 in frozen and model.backbone.layer3[0].bn1 in frozen
    assert model.backbone.layer4[0].conv1 not in frozen


def test_partial_all_stages_on_a_timm_resnet_trains_the_whole_backbone():
    """timm lists resnet18's `act1` (no weights) as a stage; it is skipped, so unfreezing every stage
    leaves layer1..layer4 trainable instead of freezing everything."""
    model = _resnet18()
    assert model.stages()[0] == "layer1"
    unfreeze_last_stages(model, len(model.stages()))
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        params = [p for n, p in model.backbone.named_parameters() if n.startswith(stage + ".")]
        assert params and all(p.requires_grad for p in params), stage


def test_full_trains_the_backbone(runs, source_model):
    model, ctx = runs["full"]
    assert _all_differ(_params(model, "backbone."), _params(source_model, "backbone."))
    assert ctx.fit_result.best_epoch > 0


def test_l2sp_trains_everything_but_stays_nearer_the_source_than_full(runs, source_model):
    model, ctx = runs["l2-sp"]
    source = _params(source_model, "backbone.")
    assert _all_differ(_params(model, "backbone."), source)
    full = _params(runs["full"][0], "backbone.")
    l2sp = _params(model, "backbone.")
    distance = lambda p: sum(float(((p[k] - source[k]) ** 2).sum()) for k in source)
    assert distance(l2sp) < distance(full)


def test_l2sp_penalty_is_zero_at_the_source_and_matches_its_formula(source_model):
    from medtransfer.strategies.l2sp import ALPHA, BETA, l2sp_penalty

    model = copy.deepcopy(source_model)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    kept, new = l2sp_penalty(model, start, new_head=False), l2sp_penalty(model, start, new_head=True)
    assert float(kept().detach()) == 0.0
    head_norm = sum(float((p ** 2).sum()) for p in model.head.parameters())
    assert float(new().detach()) == pytest.approx(BETA / 2 * head_norm)
    with torch.no_grad():
        model.backbone.block0[0].weight.add_(0.5)
    moved = 0.25 * model.backbone.block0[0].weight.numel()
    assert float(kept().detach()) == pytest.approx(ALPHA / 2 * moved, rel=1e-5)


def test_scratch_ignores_the_source(runs, target, source_model):
    model, _ = runs["scratch"]
    without_source = get_strategy("scratch").run(_ctx(target, None, None, source_classes=None))
    assert _equal(_params(model, ""), _params(without_source, ""))
    assert _all_differ(_params(model, "backbone."), _params(source_model, "backbone."))


# ----------------------------------------------------------------------------- heads


def test_target_model_keeps_the_head_for_the_same_classes(target, source_model, source_data):
    ctx = _ctx(target, source_model, source_data, source_classes=list(CLASSES))
    model = ctx.target_model("head")
    assert model is not source_model
    assert _equal(_params(model, ""), _params(source_model, ""))
    assert not _equal(_params(ctx.target_model("linear-probe", new_head=True), "head."),
                      _params(source_model, "head."))


@pytest.mark.parametrize("source_classes", [None, ["yes", "no"], ["a", "b", "c"]])
def test_target_model_replaces_the_head_for_other_classes(target, source_model, source_data, source_classes):
    ctx = _ctx(target, source_model, source_data, source_classes=source_classes)
    model = ctx.target_model("head")
    assert model.head.out_features == target.num_outputs
    assert _all_differ(_params(model, "head."), _params(source_model, "head."))
    assert _equal(_params(model, "backbone."), _params(source_model, "backbone."))


def test_a_new_head_has_the_target_width(target, source_model, source_data):
    three = replace(target, classes=["a", "b", "c"])
    model = _ctx(three, source_model, source_data).target_model("head")
    assert model.head.out_features == 3


# ----------------------------------------------------------------------------- logistic regression heads


def _sklearn_lr(train_x, train_y, val_x, val_y, task, seed=0, scale_x=None):
    """fit_logistic_head's recipe, done with scikit-learn alone: standardise (on `scale_x`, default the
    training rows), choose C on validation (AUC, ties broken by balanced accuracy, then log-loss: `selection_key`)."""
    scale_x = train_x if scale_x is None else scale_x
    mean, std = scale_x.mean(0), scale_x.std(0) + 1e-6
    best = None
    for c in GRID:
        clf = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit((train_x - mean) / std, train_y)
        key = selection_key(val_y, clf.predict_proba((val_x - mean) / std), task)
        if best is None or key > best[0]:
            best = (key, c, clf)
    key, c, clf = best
    return (lambda x: clf.predict_proba((x - mean) / std)), c, key[0]


def test_linear_probe_matches_sklearn_on_the_features(runs, target, source_model):
    model, _ = runs["linear-probe"]
    assert _equal(_params(model, "backbone."), _params(source_model, "backbone."))
    feats = {name: extract_features(source_model, target.split(name).x) for name in ("train", "val", "test")}
    proba, c, _ = _sklearn_lr(feats["train"], target.train.y.numpy(), feats["val"], target.val.y.numpy(), "binary")
    assert c in GRID
    got = predict_proba(model, target.test.x, "binary")
    np.testing.assert_allclose(got, proba(feats["test"]), atol=1e-4)


def test_a_probe_on_few_labels_is_standardised_on_the_unlabelled_training_inputs(target, source_model,
                                                                                 monkeypatch):
    """Below the full budget the features' mean and std come from the target's unlabelled training inputs
    (capped, with a fixed draw that every seed shares); at the full budget from the labelled ones, as before."""
    from medtransfer.strategies import linear_probe as module
    few = replace(target, train=Split(target.train.x[:12], target.train.y[:12]))
    pool = target.train.x  # 60 rows; the 12 labelled ones among them
    feats = {name: extract_features(source_model, few.split(name).x) for name in ("train", "val", "test")}

    def fitted(unlabelled, seed=0):
        ctx = _ctx(few, source_model, None, source_classes=None, unlabelled=unlabelled, config=_config(seed=seed))
        model = get_strategy("linear-probe").run(ctx)
        return predict_proba(model, few.test.x, "binary"), ctx.notes["feature_scaling"]

    got, note = fitted(pool)
    proba, _, _ = _sklearn_lr(feats["train"], few.train.y.numpy(), feats["val"], few.val.y.numpy(), "binary",
                              scale_x=extract_features(source_model, pool))
    np.testing.assert_allclose(got, proba(feats["test"]), atol=1e-4)
    assert note.startswith("features standardised on 60 unlabelled target inputs")
    labelled_only, _, _ = _sklearn_lr(feats["train"], few.train.y.numpy(), feats["val"], few.val.y.numpy(), "binary")
    assert np.abs(got - labelled_only(feats["test"])).max() > 1e-3  # the two recipes differ on these rows

    assert fitted(None)[1] == "features standardised on the labelled training examples"
    assert fitted(few.train.x)[1] == "features standardised on the labelled training examples"
    monkeypatch.setattr(module, "PROBE_SCALING_MAX", 30)
    (capped0, note), (capped1, _) = fitted(pool, seed=0), fitted(pool, seed=1)
    assert note.startswith("features standardised on 30 ")
    np.testing.assert_allclose(capped0, capped1, atol=1e-6)  # one draw of the 30, whatever the run's seed
    monkeypatch.setattr(module, "PROBE_SCALING_MAX", 12)  # no more than the labelled examples: those serve
    assert fitted(pool)[1] == "features standardised on the labelled training examples"


def test_linear_probe_multiclass_matches_sklearn(source_model):
    g = torch.Generator().manual_seed(5)

    def split(n):
        x = torch.randn(n, N_FEATURES, generator=g)
        return Split(x, torch.stack([x[:, 0], x[:, 1], -x[:, 0] - x[:, 1]], 1).argmax(1))

    three = TaskDataset("three", "tabular", "multiclass", ["a", "b", "c"], split(90), split(45), split(60))
    ctx = _ctx(three, source_model, None, source_classes=list(CLASSES))
    model = get_strategy("linear-probe").run(ctx)
    assert model.head.out_features == 3
    feats = {name: extract_features(source_model, three.split(name).x) for name in ("train", "val", "test")}
    proba, _, _ = _sklearn_lr(feats["train"], three.train.y.numpy(), feats["val"], three.val.y.numpy(),
                              "multiclass")
    np.testing.assert_allclose(predict_proba(model, three.test.x, "multiclass"), proba(feats["test"]), atol=1e-4)


def test_lp_ft_starts_from_the_linear_probe(runs, target, source_model, source_data):
    probe, _ = runs["linear-probe"]
    # with no epochs to run, lp-ft is exactly the linear probe
    ctx0 = _ctx(target, source_model, source_data, source_classes=None, config=_config(epochs=0))
    start = get_strategy("lp-ft").run(ctx0)
    assert _equal(_params(start, ""), _params(probe, ""))
    # the fine-tuning run's epoch-0 validation score is the linear probe's
    model, ctx = runs["lp-ft"]
    probe_score = selection_score(target.val.y.numpy(), predict_proba(probe, target.val.x, "binary"), "binary")
    assert ctx.fit_result.history[0]["val_score"] == pytest.approx(probe_score, abs=1e-9)
    assert ctx.fit_result.best_score >= probe_score


def test_target_only_is_sklearn_logistic_regression_on_the_target_rows(runs, target):
    model, _ = runs["target-only"]
    proba, _, _ = _sklearn_lr(target.train.x.numpy(), target.train.y.numpy(), target.val.x.numpy(),
                              target.val.y.numpy(), "binary")
    np.testing.assert_allclose(predict_proba(model, target.test.x, "binary"), proba(target.test.x.numpy()),
                               atol=1e-4)


def test_source_only_is_sklearn_on_the_source_rows(runs, target, source_data):
    model, _ = runs["source-only"]
    s = source_data
    proba, _, _ = _sklearn_lr(s.train.x.numpy(), s.train.y.numpy(), s.val.x.numpy(), s.val.y.numpy(), "binary")
    np.testing.assert_allclose(predict_proba(model, target.test.x, "binary"), proba(target.test.x.numpy()),
                               atol=1e-4)


def test_pooled_uses_source_and_target_rows(runs, target, source_data):
    model, _ = runs["pooled"]
    x = np.concatenate([source_data.train.x.numpy(), target.train.x.numpy()])
    y = np.concatenate([source_data.train.y.numpy(), target.train.y.numpy()])
    proba, _, _ = _sklearn_lr(x, y, target.val.x.numpy(), target.val.y.numpy(), "binary")
    got = predict_proba(model, target.test.x, "binary")
    np.testing.assert_allclose(got, proba(target.test.x.numpy()), atol=1e-4)
    for other in ("target-only", "source-only"):
        assert not np.allclose(got, predict_proba(runs[other][0], target.test.x, "binary"), atol=1e-4)


def test_source_baselines_need_source_data(target, source_model):
    ctx = _ctx(target, source_model, None)
    for name in ("source-only", "pooled"):
        with pytest.raises(MedTransferError, match="source dataset"):
            get_strategy(name).run(ctx)


def test_source_baselines_need_the_same_classes(target, source_data):
    other = replace(source_data, classes=["healthy", "sick"])
    for name in ("source-only", "pooled"):
        with pytest.raises(MedTransferError, match="classes"):
            get_strategy(name).run(_ctx(target, None, other))


def test_tabular_baselines_refuse_images():
    g = torch.Generator().manual_seed(0)
    split = Split(torch.rand(8, 1, 8, 8, generator=g), torch.tensor([0, 1] * 4))
    images = TaskDataset("img", "image2d", "binary", list(CLASSES), split, split, split)
    for name in ("target-only", "source-only", "pooled"):
        with pytest.raises(MedTransferError, match="tabular"):
            get_strategy(name).run(TransferContext(images, _config(), ARCH, SPEC))


# ----------------------------------------------------------------------------- they all learn


@pytest.mark.parametrize("name", TRAINED)
def test_every_strategy_learns_the_task(runs, target, name):
    model, _ = runs[name]
    prob = predict_proba(model, target.test.x, "binary")
    assert prob.shape == (len(target.test), 2)
    assert roc_auc_score(target.test.y.numpy(), prob[:, 1]) > 0.75
