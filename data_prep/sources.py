"""Read documents from a domain source, streaming (memory does not grow with the source's size).

Kinds, told apart by the path:
- a folder of text files (.txt, .md, .rst, .py or no suffix), one document per file, in sorted order;
- `.jsonl`, `.jsonl.gz`, `.jsonl.zst` (one JSON record per line, text in a chosen field) and `.parquet`;
- a HF dataset folder written by `save_to_disk`;
- `hf://NAME_OR_FOLDER[@split]`: `datasets.load_dataset(..., streaming=True)`, for local data files or, where the
  machine is online, a hub dataset.

Each source yields `Doc(key, text, bad_bytes)`; `key` is stable across runs. Bytes that are not UTF-8 are replaced
(U+FFFD) and the document is flagged, so prep can count them; they never crash a run.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from data_prep.errors import OdysseyError

TEXT_SUFFIXES = {".txt", ".text", ".md", ".rst", ".py", ""}
HF_PREFIX = "hf://"


class SourceError(OdysseyError, ValueError):
    """A source that cannot be read: one line naming the path and what is wrong."""


@dataclass(frozen=True)
class Doc:
    key: str
    text: str
    bad_bytes: bool = False


def decode(raw: bytes) -> tuple[str, bool]:
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="replace"), True


def _is_hf_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file())


def source_kind(source: str | Path) -> str:
    if str(source).startswith(HF_PREFIX):
        return "hf_load"
    path = Path(source)
    if not path.exists():
        raise SourceError(f"source not found: {path}")
    if _is_hf_dataset(path):
        return "hf_disk"
    if path.is_dir():
        return "text_dir"
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz", ".jsonl.zst", ".ndjson")):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    raise SourceError(f"{path}: unsupported source (expected a text folder, .jsonl[.gz|.zst], .parquet, "
                      f"a HF save_to_disk folder or hf://NAME)")


def _text_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES and not p.name.startswith("."))


def source_files(source: str | Path) -> list[Path]:
    kind = source_kind(source)
    if kind == "hf_load":
        local = Path(str(source)[len(HF_PREFIX):].split("@")[0])
        return sorted(p for p in local.rglob("*") if p.is_file()) if local.is_dir() else []
    path = Path(source)
    if kind == "text_dir":
        return _text_files(path)
    if kind == "hf_disk":
        return sorted(p for p in path.rglob("*") if p.is_file())
    return [path]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _field(record: dict, field: str, where: str) -> str:
    if not isinstance(record, dict) or field not in record:
        fields = sorted(record)[:8] if isinstance(record, dict) else type(record).__name__
        raise SourceError(f"{where}: no field '{field}' (fields: {fields})")
    value = record[field]
    if not isinstance(value, str):
        raise SourceError(f"{where}: field '{field}' is {type(value).__name__}, not text")
    return value


def _open_binary(path: Path) -> io.BufferedIOBase:
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    if name.endswith(".zst"):
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True))
    return open(path, "rb")


def _jsonl(path: Path, text_field: str) -> Iterator[Doc]:
    with _open_binary(path) as fh:
        for i, line in enumerate(fh):
            if not line.strip():
                continue
            text_line, bad = decode(line)
            try:
                record = json.loads(text_line)
            except json.JSONDecodeError as err:
                raise SourceError(f"{path}:{i + 1}: not valid JSON ({err.msg})") from None
            yield Doc(f"{path.name}:{i}", _field(record, text_field, f"{path}:{i + 1}"), bad)


def _parquet(path: Path, text_field: str) -> Iterator[Doc]:
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


def _hf_rows(rows, text_field: str, where: str) -> Iterator[Doc]:
    for i, row in enumerate(rows):
        text = _field(row, text_field, f"{where} row {i}")
        yield Doc(str(i), text)


def _hf_disk(path: Path, text_field: str) -> Iterator[Doc]:
    import datasets

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise SourceError(f"{path}: DatasetDict without a 'train' split (splits: {list(ds)})")
        ds = ds["train"]
    if text_field not in ds.column_names:
        raise SourceError(f"{path}: no column '{text_field}' (columns: {ds.column_names[:8]})")
    rows = (row for batch in ds.select_columns([text_field]).iter(batch_size=1024)
            for row in ({text_field: t} for t in batch[text_field]) if row[text_field] is not None)
    yield from _hf_rows(rows, text_field, str(path))


def _hf_load(spec: str, text_field: str) -> Iterator[Doc]:
    import datasets

    name, _, split = spec[len(HF_PREFIX):].partition("@")
    try:
        ds = datasets.load_dataset(name, split=split or "train", streaming=True)
    except Exception as err:  # datasets raises many types (FileNotFoundError, DatasetNotFoundError, ConnectionError)
        raise SourceError(f"{spec}: load_dataset failed ({type(err).__name__}: {str(err).splitlines()[0][:200]})") \
            from None
    yield from _hf_rows(ds, text_field, spec)


def iter_docs(source: str | Path, text_field: str = "text") -> Iterator[Doc]:
    kind = source_kind(source)
    if kind == "hf_load":
        yield from _hf_load(str(source), text_field)
        return
    path = Path(source)
    if kind == "text_dir":
        for f in _text_files(path):
            text, bad = decode(f.read_bytes())
            yield Doc(str(f.relative_to(path)), text, bad)
    elif kind == "jsonl":
        yield from _jsonl(path, text_field)
    elif kind == "parquet":
        yield from _parquet(path, text_field)
    else:
        yield from _hf_disk(path, text_field)
