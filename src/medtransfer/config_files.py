"""YAML config files (experiment grids, federated runs) read into pydantic models: one clear line for a
missing file, bad YAML, or the first invalid key."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .errors import MedTransferError


def load_yaml_config(path: Path, model, kind: str, keys: str, fields: Callable[[tuple], dict] | None = None):
    """(`model` validated from the YAML file at `path`, the file's text). `kind` names the file in errors
    ("experiment config"), `keys` its main keys ("name, targets, strategies"); `fields(loc)` gives the
    allowed keys at an error's location (default: the model's own)."""
    import yaml
    from pydantic import ValidationError

    path = Path(path)
    if not path.is_file():
        raise MedTransferError(f"{kind} {path} not found")
    text = path.read_text()
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise MedTransferError(f"{path} is not valid YAML: {exc}".replace("\n", " ")) from None
    if not isinstance(raw, dict):
        raise MedTransferError(f"{path} must be a YAML mapping with {keys}, …")
    try:
        return model(**raw), text
    except ValidationError as exc:
        allowed = fields or (lambda loc: model.model_fields)
        raise MedTransferError(f"{path}: {describe_error(exc.errors()[0], allowed)}") from None


def describe_error(error: dict, fields: Callable[[tuple], dict]) -> str:
    """One pydantic error as a line naming the key, what is wrong and the value given."""
    where = ".".join(str(p) for p in error["loc"]) or "config"
    if error["type"] == "extra_forbidden":
        return f"unknown key {where!r}; allowed: {', '.join(fields(tuple(error['loc'])))}"
    if error["type"] == "missing":
        return f"missing key {where!r}"
    if error["type"] == "literal_error":
        return f"{where}: {error['msg'].removeprefix('Input should be ')} are allowed (got {error.get('input')!r})"
    if error["type"] == "too_short":
        return f"{where}: at least {error['ctx']['min_length']} entries needed (got {error.get('input')!r})"
    message = error["msg"].removeprefix("Value error, ")
    return f"{where}: {message}" + (f" (got {error.get('input')!r})" if error["loc"] else "")


def seed_list(seeds) -> list[int]:
    """A config's `seeds`: a count n (seeds 0..n-1) or a list of distinct seeds >= 0 (a pydantic validator's
    body: raises ValueError)."""
    if isinstance(seeds, int):
        if seeds < 1:
            raise ValueError("seeds must be at least 1 (a count) or a list of seeds")
        return list(range(seeds))
    if not seeds or len(set(seeds)) < len(seeds) or any(s < 0 for s in seeds):
        raise ValueError("seeds must be a count or a list of distinct seeds >= 0")
    return list(seeds)
