"""Plain-text sources: a folder of files or an archive (.tar, .tar.gz, .tgz, .zip), cut into documents at a chosen
boundary, with the source's own train/valid/test split read from the file names.

M2D2, for one, ships a domain as `<domain>.tar.gz` holding `train.txt`, `valid.txt` and `test.txt`; the paper reports
on that test split, so it must survive prep. When every file is named after a split (the file, or a folder above it),
each file's documents go to that split; otherwise (a code tree with a `test/` folder among others, plain files) the
source is split by document hash, as every other source.
"""
from __future__ import annotations

import re
import tarfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Iterator

TEXT_SUFFIXES = {".txt", ".text", ".md", ".rst", ".py", ""}
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".zip")
# file or folder stems that name a split, and the split they mean
SPLIT_NAMES = {"train": "train", "training": "train", "valid": "val", "validation": "val", "val": "val",
               "dev": "val", "test": "test"}
BOUNDARIES = ("file", "line", "blank_line")  # one document per file, per line, or per blank-line-separated block
SNIFF_BYTES = 8192  # a NUL byte among a file's first bytes marks it binary (decode_file)
MAX_BAD_BYTES = 0.3  # default share of non-UTF-8 bytes above which a file is binary (decode_file)


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def is_text_file(name: str) -> bool:
    p = PurePosixPath(name)
    return p.suffix.lower() in TEXT_SUFFIXES and not p.name.startswith(".")


def split_of_path(name: str) -> str | None:
    """The split a file's path names (its own stem, or a folder above it), or None."""
    parts = PurePosixPath(name).parts
    for part in reversed(parts):
        split = SPLIT_NAMES.get(PurePosixPath(part).stem.lower())
        if split:
            return split
    return None


def documents(text: str, boundary: str) -> list[str]:
    """The documents of one file's text."""
    if boundary == "file":
        return [text]
    if boundary == "line":
        return [line for line in text.splitlines() if line.strip()]
    return [block.strip("\n") for block in re.split(r"\n\s*\n", text) if block.strip()]


def own_splits(names: list[str]) -> dict[str, str] | None:
    """{file name: split} when every file names a split, else None (the source is split by hash)."""
    splits = {n: split_of_path(n) for n in names}
    return splits if splits and all(splits.values()) else None


def folder_names(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and is_text_file(p.name))


def folder_files(root: Path, names: list[str]) -> Iterator[tuple[str, bytes]]:
    for name in names:
        yield name, (root / name).read_bytes()


def archive_names(path: Path) -> list[str]:
    if path.name.lower().endswith(".zip"):
        with zipfile.ZipFile(path) as z:
            return sorted(n for n in z.namelist() if not n.endswith("/") and is_text_file(n))
    with tarfile.open(path, "r:*") as tar:
        return sorted(m.name for m in tar.getmembers() if m.isfile() and is_text_file(m.name))


def archive_files(path: Path, names: list[str]) -> Iterator[tuple[str, bytes]]:
    """(member name, bytes) of the named text files (from `archive_names`) of the archive, in that order."""
    if path.name.lower().endswith(".zip"):
        with zipfile.ZipFile(path) as z:
            for name in names:
                yield name, z.read(name)
        return
    with tarfile.open(path, "r:*") as tar:
        for name in names:
            with tar.extractfile(name) as f:
                yield name, f.read()


def decode(raw: bytes) -> tuple[str, bool]:
    """UTF-8 text, with undecodable bytes replaced (U+FFFD) and flagged instead of failing."""
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="replace"), True


def bad_byte_share(raw: bytes) -> float:
    """The share of bytes that are not part of a valid UTF-8 sequence (what decoding drops), 0…1."""
    return (len(raw) - len(raw.decode("utf-8", errors="ignore").encode("utf-8"))) / max(len(raw), 1)


def decode_file(raw: bytes, max_bad_bytes: float) -> tuple[str, bool] | None:
    """`decode` of a text file, or None for a file that is mostly not text, which prep skips and counts.

    The rule: a file is binary when its first 8 KiB hold a NUL byte (UTF-8 and 8-bit text never do; images,
    archives, object files and UTF-16 do, as git and grep assume), or when more than `max_bad_bytes` of its bytes
    fail UTF-8 decoding (random or compressed data: about 43%; Latin-1 prose: a few %; cp1251 Cyrillic: most).
    Below the share, a file is text and its few bad bytes are replaced by U+FFFD, as `decode` does. Tokenizing a
    binary file would only add U+FFFD soup to the domain.
    """
    if b"\0" in raw[:SNIFF_BYTES]:
        return None
    text, bad = decode(raw)
    if bad and bad_byte_share(raw) > max_bad_bytes:
        return None
    return text, bad
