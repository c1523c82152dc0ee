"""Task examples from a source: records with an input, a target and (classification) a label, in their split.

Sources: a .jsonl[.gz|.zst] file (one split: prep splits it by hash), a folder of split files named like M2D2's or
HF's (`train.jsonl`, `validation.jsonl`/`valid`/`dev`, `test.jsonl`), or `hf://NAME[:CONFIG][@SPLIT]` through
`datasets.load_dataset` (without @SPLIT: the dataset's own train/validation/test splits). Field names are mapped by the
task config; a missing field or a non-text value is one line naming the record.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from data_prep.sources import HF_PREFIX, HF_SPLITS, SourceError, jsonl_objects, load_hf


@dataclass
class Record:
    key: str  # where it came from (file:line, split:row): the split hash and error messages
    fields: dict
    split: str | None = None  # train / val / test where the source named it


def _jsonl_records(path: Path, split: str | None) -> Iterator[Record]:
    for i, fields, _ in jsonl_objects(path):
        if not isinstance(fields, dict):
            raise SourceError(f"{path}:{i + 1}: a JSON object per line is needed, not {type(fields).__name__}")
        yield Record(f"{path.name}:{i + 1}", fields, split)


def source_stamp(source: str) -> list:
    """[name, bytes, mtime_ns] of a local source's files (a jsonl, or a folder of split files); an `hf://` source is
    its name and revision. Recorded in the manifest, so a study notices a source that changed."""
    if source.startswith(HF_PREFIX):
        return [source]
    path = Path(source)
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path] if path.exists() else []
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def _split_files(root: Path) -> dict[Path, str]:
    found = {}
    for p in sorted(root.iterdir()):
        stem = p.name.split(".")[0].lower()
        if p.is_file() and ".jsonl" in p.name and stem in HF_SPLITS:
            found[p] = HF_SPLITS[stem]
    if not found:
        raise SourceError(f"{root}: a task folder holds train/validation/test .jsonl files (an eval-only set: test "
                          f"alone); found {sorted(p.name for p in root.iterdir())[:8]}")
    return found


def _hf_records(spec: str, revision: str | None) -> Iterator[Record]:
    ds, split = load_hf(spec, revision)
    parts = {None: ds} if split is not None else {n: ds[n] for n in ds if n in HF_SPLITS}
    if split is None and "train" not in parts:
        raise SourceError(f"{spec}: no 'train' split (splits: {list(ds)}); name one with @SPLIT")
    for part, rows in parts.items():
        for i, row in enumerate(rows):
            yield Record(f"{part or split}:{i}", dict(row), None if part is None else HF_SPLITS[part])


def iter_records(source: str, revision: str | None = None) -> Iterator[Record]:
    if str(source).startswith(HF_PREFIX):
        yield from _hf_records(str(source), revision)
        return
    path = Path(source)
    if not path.exists():
        raise SourceError(f"task source not found: {path}")
    if path.is_dir():
        for f, split in _split_files(path).items():
            yield from _jsonl_records(f, split)
    elif ".jsonl" in path.name:
        yield from _jsonl_records(path, None)
    else:
        raise SourceError(f"{path}: a task source is a .jsonl file, a folder of split .jsonl files, or hf://NAME")


def text_field(record: Record, field: str) -> str:
    """The record's field as text (labels may be ints or bools: they become their string)."""
    if field not in record.fields:
        raise SourceError(f"{record.key}: no field '{field}' (fields: {sorted(record.fields)[:8]})")
    value = record.fields[field]
    if isinstance(value, (int, bool)):
        return str(value)
    if not isinstance(value, str):
        raise SourceError(f"{record.key}: field '{field}' is {type(value).__name__}, not text")
    return value
