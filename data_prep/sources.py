"""Read documents from a domain source: a folder of text files, a .jsonl or .parquet file, or a HF dataset on disk.

Each source yields `Doc(key, text)`; `key` is stable across runs (file path + record index) and is what the split hash uses.
`source_files()` lists the files behind a source with their sha256, for the manifest.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

TEXT_SUFFIXES = {".txt", ".text", ".md", ".rst", ".py", ""}


class SourceError(ValueError):
    """A source that cannot be read: one line naming the path and what is wrong."""


@dataclass(frozen=True)
class Doc:
    key: str
    text: str


def _is_hf_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file())


def source_kind(path: Path) -> str:
    if not path.exists():
        raise SourceError(f"source not found: {path}")
    if _is_hf_dataset(path):
        return "hf"
    if path.is_dir():
        return "text_dir"
    if path.suffix == ".jsonl":
        return "jsonl"
    if path.suffix == ".parquet":
        return "parquet"
    raise SourceError(f"{path}: unsupported source (expected a text folder, .jsonl, .parquet or a HF save_to_disk folder)")


def _text_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES and not p.name.startswith("."))


def source_files(path: Path) -> list[Path]:
    kind = source_kind(path)
    if kind == "text_dir":
        return _text_files(path)
    if kind == "hf":
        return sorted(p for p in path.rglob("*") if p.is_file())
    return [path]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _field(record: dict, field: str, where: str) -> str:
    if field not in record:
        raise SourceError(f"{where}: no field '{field}' (fields: {sorted(record)[:8]})")
    value = record[field]
    if not isinstance(value, str):
        raise SourceError(f"{where}: field '{field}' is {type(value).__name__}, not text")
    return value


def iter_docs(path: str | Path, text_field: str = "text") -> Iterator[Doc]:
    path = Path(path)
    kind = source_kind(path)
    if kind == "text_dir":
        for f in _text_files(path):
            yield Doc(str(f.relative_to(path)), f.read_bytes().decode("utf-8", errors="replace"))
    elif kind == "jsonl":
        with open(path, "rb") as fh:
            for i, line in enumerate(fh):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line.decode("utf-8", errors="replace"))
                except json.JSONDecodeError as err:
                    raise SourceError(f"{path}:{i + 1}: not valid JSON ({err.msg})") from None
                yield Doc(f"{path.name}:{i}", _field(record, text_field, f"{path}:{i + 1}"))
    elif kind == "parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        if text_field not in pf.schema_arrow.names:
            raise SourceError(f"{path}: no column '{text_field}' (columns: {pf.schema_arrow.names[:8]})")
        i = 0
        for batch in pf.iter_batches(columns=[text_field], batch_size=1024):
            for text in batch.column(0).to_pylist():
                if text is not None:
                    yield Doc(f"{path.name}:{i}", text)
                i += 1
    else:
        import datasets

        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if "train" not in ds:
                raise SourceError(f"{path}: DatasetDict without a 'train' split (splits: {list(ds)})")
            ds = ds["train"]
        if text_field not in ds.column_names:
            raise SourceError(f"{path}: no column '{text_field}' (columns: {ds.column_names[:8]})")
        i = 0
        for batch in ds.select_columns([text_field]).iter(batch_size=1024):
            for text in batch[text_field]:
                if text is not None:
                    yield Doc(f"{i}", text)
                i += 1
