"""budget: parsing, and stratified seeded label budgets on tiny generated datasets."""

from __future__ import annotations

import pytest
import torch

from medtransfer.data import Split, TaskDataset, apply_budget, parse_budget
from medtransfer.data.budget import stratified_sample
from medtransfer.errors import MedTransferError


def _split(counts, offset=0):
    """Labels with `counts[c]` examples of class c; x holds a unique id per example."""
    y = torch.cat([torch.full((n,), c, dtype=torch.long) for c, n in enumerate(counts)])
    x = torch.arange(offset, offset + len(y), dtype=torch.float32)[:, None]
    return Split(x, y)


def _dataset(train=(60, 30, 10), val=(20, 10, 5), test=(10, 10, 10)):
    return TaskDataset(name="toy", modality="tabular", task="multiclass",
                       classes=[f"c{i}" for i in range(len(train))],
                       train=_split(train), val=_split(val, 1000), test=_split(test, 2000))


def _ids(split):
    return split.x[:, 0].long().tolist()


@pytest.mark.parametrize("text, expected", [
    ("40", 40), (40, 40), (" 7 ", 7), ("5%", 0.05), ("100%", None), ("all", None), ("ALL", None),
    ("", None), (None, None), ("50%", 0.5), ("0", 0), (0, 0),
])
def test_parse_budget(text, expected):
    assert parse_budget(text) == expected


@pytest.mark.parametrize("text", ["abc", "150%", "-3", "0%", "2.5", "%", "-5%"])
def test_parse_budget_rejects(text):
    with pytest.raises(MedTransferError, match="bad budget.*count like 40"):
        parse_budget(text)


def test_all_keeps_the_dataset():
    ds = _dataset()
    assert apply_budget(ds, "all") is ds
    assert apply_budget(ds, None) is ds


def test_budget_zero_leaves_no_labelled_target_examples():
    ds = _dataset()
    out = apply_budget(ds, 0)
    assert len(out.train) == 0 and len(out.val) == 0 and out.test is ds.test
    assert out.train.x.shape[1:] == ds.train.x.shape[1:] and out.train.y.dtype == ds.train.y.dtype


@pytest.mark.parametrize("n", [3, 10, 37, 100])
def test_exact_count_every_class(n):
    ds = _dataset()
    out = apply_budget(ds, n, seed=0)
    assert len(out.train) == n
    assert set(out.train.y.tolist()) == {0, 1, 2}
    ids = _ids(out.train)
    assert len(set(ids)) == n and set(ids) <= set(_ids(ds.train))
    # labels still belong to their examples
    assert torch.equal(out.train.y, ds.train.y[out.train.x[:, 0].long()])
    assert out.test is ds.test


def test_imbalanced_budget_equal_to_number_of_classes():
    ds = _dataset(train=(2, 5, 193), val=(3, 3, 30))
    for seed in range(5):
        out = apply_budget(ds, 3, seed=seed)
        assert sorted(out.train.y.tolist()) == [0, 1, 2]
        assert sorted(out.val.y.tolist()) == [0, 1, 2]


def test_sample_is_roughly_proportional():
    y = _split((80, 20)).y
    idx = stratified_sample(y, 10, seed=0)
    assert sorted(y[idx].tolist()) == [0] * 8 + [1] * 2


def test_reproducible_and_seed_dependent():
    ds = _dataset()
    a, b, c = apply_budget(ds, 20, seed=1), apply_budget(ds, 20, seed=1), apply_budget(ds, 20, seed=2)
    assert _ids(a.train) == _ids(b.train) and _ids(a.val) == _ids(b.val)
    assert _ids(a.train) != _ids(c.train)


@pytest.mark.parametrize("budget, n_train, expected", [
    ("5%", 200, 10), ("10%", 100, 10), ("12.5%", 200, 25), ("33%", 100, 33), ("2.9%", 100, 3),
    ("7%", 60, 4), ("1%", 200, 2), ("100%", 100, 100),
])
def test_percent_budgets_round(budget, n_train, expected):
    ds = _dataset(train=(n_train // 2, n_train - n_train // 2), val=(10, 10), test=(5, 5))
    assert len(apply_budget(ds, budget).train) == expected


def test_tiny_percent_clamps_to_one_then_needs_every_class():
    ds = _dataset(train=(50, 50), val=(5, 5), test=(5, 5))
    with pytest.raises(MedTransferError, match="smaller than the number of classes"):
        apply_budget(ds, "0.1%")  # 0.1 example -> 1, below the 2 classes
    assert len(apply_budget(ds, "2%").train) == 2  # exactly one per class


def test_val_limited_to_budget():
    ds = _dataset(val=(30, 20, 10))  # 60 validation examples
    out = apply_budget(ds, 20, seed=0)
    assert len(out.val) == 20
    assert set(out.val.y.tolist()) == {0, 1, 2}
    assert set(_ids(out.val)) <= set(_ids(ds.val))
    assert len(apply_budget(ds, 3).val) == 3  # max(n, num_classes)
    assert apply_budget(ds, 60).val is ds.val  # no cut needed
    assert apply_budget(ds, 80).val is ds.val


def test_budget_larger_than_train_raises():
    ds = _dataset()  # 100 training examples
    with pytest.raises(MedTransferError, match="budget 101 exceeds the 100 training examples of toy"):
        apply_budget(ds, 101)
    assert len(apply_budget(ds, 100).train) == 100


def test_budget_smaller_than_number_of_classes_raises():
    with pytest.raises(MedTransferError, match=r"budget 2 is smaller than the number of classes \(3\)"):
        apply_budget(_dataset(), 2)


def test_multilabel_budget_is_a_plain_subset():
    y = (torch.arange(40)[:, None] % torch.tensor([2, 3, 5]) == 0).float()
    split = Split(torch.arange(40, dtype=torch.float32)[:, None], y)
    ds = TaskDataset(name="ml", modality="tabular", task="multilabel", classes=["a", "b", "c"],
                     train=split, val=split, test=split)
    out = apply_budget(ds, 7, seed=0)
    assert len(out.train) == 7 and len(set(_ids(out.train))) == 7
    assert out.train.y.shape == (7, 3)
    assert len(out.val) == 7
