"""Typed YAML for every package: one base section that forbids unknown keys, one error with one format.

The run config (trainer/config.py), the study file (study/config.py) and the prep YAML (data_prep/cli.py) are all
pydantic models built on `Section` and validated by `validate`, so a typo anywhere reads the same:

    odyssey: error: config key 'optim.lrr': unknown key
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from data_prep.errors import OdysseyError

Model = TypeVar("Model", bound=BaseModel)


class ConfigError(OdysseyError, ValueError):
    """A bad config: the message is one line that names the key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


def format_error(err: ValidationError, what: str = "config") -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "<root>"
    msg = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{what} key '{key}': {msg}{more}"


def validate(model: type[Model], tree: Any, what: str = "config") -> Model:
    """`tree` as a `model`, or a ConfigError naming the first bad key (`what` names the kind of file)."""
    try:
        return model.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(format_error(err, what)) from None


def read_yaml(path: str | Path) -> dict:
    """A YAML file whose top level is a mapping, or a one-line ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return tree


def set_dotted(tree: dict, dotted: str, value: Any) -> None:
    """tree['a']['b']['c'] = value for 'a.b.c', creating sections on the way; a non-mapping on the way is an error."""
    *parents, last = dotted.split(".")
    node = tree
    for k in parents:
        if not isinstance(node.get(k), dict):
            if k in node:
                raise ConfigError(f"override {dotted}: '{k}' is not a section")
            node[k] = {}
        node = node[k]
    node[last] = value
