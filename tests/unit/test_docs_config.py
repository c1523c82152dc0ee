"""docs/CONFIG.md lists every key of the three typed configs, and no key they do not have: the tables are compared
with the pydantic models, so the two cannot drift."""
import re
import types
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from data_prep.cli import PrepDefaults, PrepFile, SourceKeys
from study.config import StudyCfg
from trainer.config import Config, ModelCfg

# a study's model entries are run-config model sections, its domains take a prep YAML's source keys: documented there
STUDY_ELSEWHERE = ({f"models[].{k}" for k in ModelCfg.model_fields}
                   | {f"{d}.{k}" for d in ("domains[]", "reference") for k in SourceKeys.model_fields})

DOC = Path(__file__).resolve().parents[2] / "docs" / "CONFIG.md"


def keys(model: type[BaseModel], prefix: str = "", stop: frozenset[str] = frozenset()) -> set[str]:
    """Dotted keys of a model: nested sections recurse, a list of sections is `key` plus `key[].field`."""
    out = set()
    for name, field in model.model_fields.items():
        key, ann = prefix + name, field.annotation
        if typing.get_origin(ann) in (typing.Union, types.UnionType):  # X | None: the walk looks at X
            ann = next(a for a in typing.get_args(ann) if a is not type(None))
        args = typing.get_args(ann)
        if key in stop:
            out.add(key)
        elif isinstance(ann, type) and issubclass(ann, BaseModel):
            out |= keys(ann, key + ".", stop)
        elif typing.get_origin(ann) is list and args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
            out |= {key} | keys(args[0], key + "[].", stop)
        else:
            out.add(key)
    return out


def documented(heading: str) -> set[str]:
    """The backticked keys in the first column of the table under `## heading…`."""
    text = DOC.read_text()
    start = text.index("\n## " + heading)
    end = text.find("\n## ", start + 1)
    section = text[start:end if end > 0 else None]
    return set(re.findall(r"^\| `([^`]+)` \|", section, flags=re.M))


@pytest.mark.parametrize("heading, expected", [
    ("Run config", keys(Config)),
    ("Study file", keys(StudyCfg, stop=frozenset({"model", "train", "prep", "models[].reference", "variants[].train"})) - STUDY_ELSEWHERE),
    ("Prep file", keys(PrepFile) - {f"domains[].{k}" for k in PrepDefaults.model_fields}),
])
def test_config_doc_lists_every_key(heading, expected):
    found = documented(heading)
    assert found == expected, f"missing from docs: {sorted(expected - found)}; not in the model: {sorted(found - expected)}"


def test_key_walk_sees_nested_and_listed_sections():
    assert {"optim.lr", "data.streams", "data.streams[].proportion", "eval.domains[].path"} <= keys(Config)
