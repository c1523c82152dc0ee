"""Read documents from a domain source, streaming (memory does not grow with the source's size).

Kinds, told apart by the path:
- a folder of text files (.txt, .md, .rst, .py or no suffix), or an archive of them (.tar[.gz|.xz], .tgz, .zip),
  in sorted order, cut into documents per file, per line or per blank-line-separated block (data_prep/text_files.py);
- `.jsonl`, `.jsonl.gz`, `.jsonl.zst` (one JSON record per line, text in a chosen field) and `.parquet`;
- a HF dataset folder written by `save_to_disk`;
- `hf://NAME_OR_FOLDER[:CONFIG][@SPLIT]`: `datasets.load_dataset(..., streaming=True)`, for local data files or, where
  the machine is online, a hub dataset (at `revision`).

Each source yields `Doc(key, text, bad_bytes, split)`; `key` is stable across runs. `split` is the source's own split
(train/val/test) where it brings one: text files named after a split, a HF dataset with train and validation/test
splits; else None, and prep splits by document hash. Bytes that are not UTF-8 are replaced (U+FFFD) and the document
is flagged, so prep can count them; they never crash a run. A text file that is mostly not text (a NUL byte, or too
many bad bytes: text_files.decode_file) yields one `Doc(binary=True)` with no text, for prep to count and skip.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from data_prep import text_files
from data_prep.errors import OdysseyError
from data_prep.text_files import MAX_BAD_BYTES, decode, decode_file

HF_PREFIX = "hf://"
HF_SPLITS = {"train": "train", "validation": "val", "valid": "val", "dev": "val", "test": "test"}


class SourceError(OdysseyError, ValueError):
    """A source that cannot be read: one line naming the path and what is wrong."""


@dataclass(frozen=True)
class Doc:
    key: str
    text: str
    bad_bytes: bool = False
    split: str | None = None  # the source's own split (train/val/test), or None: prep splits by hash
    binary: bool = False  # a text source's file skipped as binary: no text, counted by prep, never tokenized


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
    if text_files.is_archive(path):
        return "archive"
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz", ".jsonl.zst", ".ndjson")):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    raise SourceError(f"{path}: unsupported source (expected a text folder or archive, .jsonl[.gz|.zst], .parquet, "
                      f"a HF save_to_disk folder or hf://NAME)")


def _text_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and text_files.is_text_file(p.name))


def hf_spec(spec: str) -> tuple[str, str | None, str | None]:
    """hf://NAME[:CONFIG][@SPLIT] → (name, config, split)."""
    rest, _, split = spec[len(HF_PREFIX):].partition("@")
    name, _, config = rest.partition(":")
    return name, config or None, split or None


def source_files(source: str | Path) -> list[Path]:
    kind = source_kind(source)
    if kind == "hf_load":
        local = Path(hf_spec(str(source))[0])
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


def open_binary(path: Path) -> io.BufferedIOBase:
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    if name.endswith(".zst"):
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True))
    return open(path, "rb")


def jsonl_objects(path: Path) -> Iterator[tuple[int, object, bool]]:
    """(0-based line number, parsed JSON value, whether the line had undecodable bytes) for each non-blank line of a
    .jsonl[.gz|.zst] file; a line that is not JSON is one line naming it."""
    with open_binary(path) as fh:
        for i, line in enumerate(fh):
            if not line.strip():
                continue
            text_line, bad = decode(line)
            try:
                yield i, json.loads(text_line), bad
            except json.JSONDecodeError as err:
                raise SourceError(f"{path}:{i + 1}: not valid JSON ({err.msg})") from None


def _jsonl(path: Path, text_field: str) -> Iterator[Doc]:
    for i, record, bad in jsonl_objects(path):
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


def _hf_rows(rows, text_field: str, where: str, split: str | None = None) -> Iterator[Doc]:
    for i, row in enumerate(rows):
        text = _field(row, text_field, f"{where} row {i}")
        yield Doc(str(i) if split is None else f"{split}:{i}", text, split=split)


def _own_splits(names: list[str]) -> dict[str, str] | None:
    """{dataset split: train/val/test} when the splits are a train split plus validation and/or test, else None."""
    mapped = {n: HF_SPLITS[n] for n in names if n in HF_SPLITS}
    return mapped if "train" in mapped and len(set(mapped.values())) > 1 else None


def _hf_disk(path: Path, text_field: str) -> Iterator[Doc]:
    import datasets

    ds = datasets.load_from_disk(str(path))
    if not isinstance(ds, datasets.DatasetDict):
        ds = datasets.DatasetDict({"train": ds})
    if "train" not in ds:
        raise SourceError(f"{path}: DatasetDict without a 'train' split (splits: {list(ds)})")
    splits = _own_splits(list(ds)) or {"train": None}
    for name, split in splits.items():
        part = ds[name]
        if text_field not in part.column_names:
            raise SourceError(f"{path}: no column '{text_field}' (columns: {part.column_names[:8]})")
        rows = ({text_field: t} for batch in part.select_columns([text_field]).iter(batch_size=1024)
                for t in batch[text_field] if t is not None)
        yield from _hf_rows(rows, text_field, str(path), split)


def load_hf(spec: str, revision: str | None):
    """(datasets.load_dataset(...) streaming, the split named by @SPLIT or None); one line when it cannot load."""
    import datasets

    from data_prep import hub

    name, config, split = hf_spec(spec)
    hub.require_dataset(name, spec, revision)  # a hub it cannot reach: one line at once, not minutes of retries
    try:
        return datasets.load_dataset(name, config, split=split, streaming=True, revision=revision), split
    except Exception as err:  # datasets raises many types (FileNotFoundError, DatasetNotFoundError, ConnectionError)
        off = hub.offline("dataset")
        if off and isinstance(err, ConnectionError) and hub.is_hub_name(name):  # offline, and not in its cache
            raise hub.unavailable(name, spec, "dataset", off) from None
        raise SourceError(f"{spec}: load_dataset failed ({type(err).__name__}: {str(err).splitlines()[0][:200]})") \
            from None


def _hf_load(spec: str, text_field: str, revision: str | None) -> Iterator[Doc]:
    """One split (`@SPLIT`, hash-split by prep), or without one the dataset's own train/validation/test splits."""
    ds, split = load_hf(spec, revision)
    if split is not None:
        yield from _hf_rows(ds, text_field, spec)
        return
    own = _own_splits(list(ds))
    for part, mapped in (own or {"train": None}).items():
        if part not in ds:
            raise SourceError(f"{spec}: no 'train' split (splits: {list(ds)}); name one with @SPLIT")
        yield from _hf_rows(ds[part], text_field, spec, mapped)


def _text_docs(names: list[str], files, boundary: str, max_bad_bytes: float) -> Iterator[Doc]:
    """Documents of (name, bytes) files, in the split each file names when all of them name one."""
    splits = text_files.own_splits(names) or {}
    for name, raw in files:
        decoded = decode_file(raw, max_bad_bytes)
        if decoded is None:
            yield Doc(name, "", True, splits.get(name), binary=True)
            continue
        text, bad = decoded
        for i, doc in enumerate(text_files.documents(text, boundary)):
            yield Doc(name if boundary == "file" else f"{name}:{i}", doc, bad, splits.get(name))


def iter_docs(source: str | Path, text_field: str = "text", boundary: str = "file",
              revision: str | None = None, max_bad_bytes: float = MAX_BAD_BYTES) -> Iterator[Doc]:
    """Every document of a source. `boundary` cuts text files (file, line, blank_line); `revision` pins a hub dataset;
    `max_bad_bytes` is the share of non-UTF-8 bytes above which a text file is binary (text_files.decode_file)."""
    kind = source_kind(source)
    if kind == "hf_load":
        yield from _hf_load(str(source), text_field, revision)
        return
    path = Path(source)
    if kind == "text_dir":
        names = text_files.folder_names(path)
        yield from _text_docs(names, text_files.folder_files(path, names), boundary, max_bad_bytes)
    elif kind == "archive":
        names = text_files.archive_names(path)  # one pass over a compressed tar for the names, one for the files
        yield from _text_docs(names, text_files.archive_files(path, names), boundary, max_bad_bytes)
    elif kind == "jsonl":
        yield from _jsonl(path, text_field)
    elif kind == "parquet":
        yield from _parquet(path, text_field)
    else:
        yield from _hf_disk(path, text_field)
