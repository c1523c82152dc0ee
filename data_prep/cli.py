"""`odyssey prep`: domain sources → MDS shards + manifest; one source, many from a YAML list, or `--validate`.

A prep YAML (every per-domain key may also be set once at the top as a default):
    out: data/domains            # or s3://bucket/domains
    tokenizer: /models/llama
    seq_len: 2048
    workers: 8
    domains:
      - {name: legal, source: raw/legal.jsonl.zst, text_field: body, dedup: true}
      - {name: code, source: raw/code/, min_chars: 50}
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from typing import Literal

from pydantic import Field

from data_prep import console
from data_prep.config import ConfigError, Section, read_yaml, validate
from data_prep.text_files import BOUNDARIES, MAX_BAD_BYTES


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prep", help="tokenize, pack and shard domain sources; validate prepared domains",
                       description="Tokenize a domain source, pack it to seq_len with EOS between documents, split "
                                   "train/val/test as the source splits them (else by document hash), and write MDS "
                                   "shards plus manifest.json (docs/PREP.md).")
    p.add_argument("source", nargs="?", help="folder of text files, .jsonl[.gz|.zst], .parquet, a HF save_to_disk "
                                            "folder, or hf://NAME_OR_FOLDER[:CONFIG][@SPLIT] (datasets.load_dataset)")
    p.add_argument("--config", help="YAML listing many domains (see docs/PREP.md)")
    p.add_argument("--task", metavar="YAML", help="task data for fine-tuning (docs/PREP.md, data_prep/tasks.py): "
                                                  "examples → shards of input_ids + labels")
    p.add_argument("--validate", nargs="+", metavar="DIR", help="check prepared domains (a domain folder, or a "
                                                                  "folder of them): hashes, sizes, token ids")
    p.add_argument("--domain", help="domain name; output goes to OUT/DOMAIN")
    p.add_argument("--out", help="folder (or s3://… URL) that holds prepared domains")
    p.add_argument("--tokenizer", help="local tokenizer folder (usually the model's)")
    p.add_argument("--seq-len", type=int)
    p.add_argument("--text-field", default="text", help="field/column with the text (jsonl, parquet, HF)")
    p.add_argument("--doc-boundary", choices=BOUNDARIES, default="file",
                   help="text files and archives: one document per file, per line, or per blank-line-separated block")
    p.add_argument("--revision", help="hf:// hub datasets: the branch, tag or commit to read (recorded in the manifest)")
    p.add_argument("--min-chars", type=int, default=1, help="skip documents shorter than this (after strip)")
    p.add_argument("--dedup", action="store_true", help="drop exact duplicate documents")
    p.add_argument("--max-bad-bytes", type=float, default=MAX_BAD_BYTES, metavar="SHARE",
                   help="text files and archives: skip a file as binary (counted) when more than this share of its "
                        "bytes are not UTF-8, or has a NUL byte in its first 8 KiB; below it, bad bytes become U+FFFD "
                        f"(default {MAX_BAD_BYTES})")
    p.add_argument("--val", type=float, default=0.05, help="fraction of documents for validation")
    p.add_argument("--test", type=float, default=0.05, help="fraction of documents for test")
    p.add_argument("--compression", default="zstd", help="MDS compression ('none' to disable)")
    p.add_argument("--size-limit", default="64mb", help="shard size limit before compression")
    p.add_argument("--workers", type=int, default=None, help="tokenizer processes (default: all cores; 0: inline)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing prepared domain")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_prep)


def prep_options(spec: dict, quiet: bool):
    """PrepOptions from one domain's keys (a prep YAML entry, the CLI flags, or a study domain)."""
    from data_prep.pack import SplitFractions
    from data_prep.prepare import PrepError, PrepOptions, default_workers

    try:
        fractions = SplitFractions(val=spec.get("val", 0.05), test=spec.get("test", 0.05))
    except ValueError as err:
        raise PrepError(str(err)) from None
    compression = spec.get("compression", "zstd")
    workers = spec.get("workers")
    max_bad_bytes = spec.get("max_bad_bytes", MAX_BAD_BYTES)
    if not 0 <= max_bad_bytes <= 1:
        raise PrepError(f"max_bad_bytes is a share of a file's bytes, from 0 to 1; got {max_bad_bytes}")
    return PrepOptions(fractions=fractions, text_field=spec.get("text_field", "text"),
                       min_chars=spec.get("min_chars", 1), dedup=bool(spec.get("dedup", False)),
                       compression=None if compression in (None, "none") else compression,
                       size_limit=str(spec.get("size_limit", "64mb")),
                       workers=default_workers() if workers is None else workers,
                       overwrite=bool(spec.get("overwrite", False)), progress=not quiet,
                       boundary=spec.get("doc_boundary", "file"), revision=spec.get("revision"),
                       max_bad_bytes=max_bad_bytes)


class SourceKeys(Section):
    """How one source is read, filtered and split (None: not set here). A study domain with a `source` takes these."""
    text_field: str | None = None
    doc_boundary: Literal["file", "line", "blank_line"] | None = None
    revision: str | None = None
    min_chars: int | None = Field(default=None, ge=0)
    dedup: bool | None = None
    max_bad_bytes: float | None = Field(default=None, ge=0, le=1)
    val: float | None = Field(default=None, ge=0, lt=1)
    test: float | None = Field(default=None, ge=0, lt=1)


class PrepDefaults(SourceKeys):
    """Keys a domain may set, or the file may set once for all domains (None: not set here)."""
    out: str | None = None
    tokenizer: str | None = None
    seq_len: int | None = Field(default=None, gt=1)
    compression: str | None = None
    size_limit: str | int | None = None
    workers: int | None = Field(default=None, ge=0)
    overwrite: bool | None = None


class PrepDomain(PrepDefaults):
    name: str
    source: str


class PrepFile(PrepDefaults):
    domains: list[PrepDomain] = Field(min_length=1)


def _specs_from_yaml(path: str) -> list[dict]:
    prep = validate(PrepFile, read_yaml(path), "prep")
    defaults = prep.model_dump(exclude_none=True, exclude={"domains"})
    specs = []
    for i, d in enumerate(prep.domains):
        spec = {**defaults, **d.model_dump(exclude_none=True)}
        for key in ("out", "tokenizer", "seq_len"):
            if key not in spec:
                raise ConfigError(f"prep key 'domains.{i}.{key}': required (set it there or at the top)")
        specs.append(spec)
    names = [s["name"] for s in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: duplicate domain names")
    return specs


def _validate(dirs: list[str], tokenizer: str | None) -> int:
    from data_prep.manifest import MANIFEST, tokenizer_fingerprint
    from data_prep.tokenize import load_tokenizer
    from data_prep.validate import validate_domain

    fp = tokenizer_fingerprint(load_tokenizer(tokenizer)) if tokenizer else None
    domains = []
    for d in map(Path, dirs):
        domains += [d] if (d / MANIFEST).is_file() or not d.is_dir() else sorted(
            p for p in d.iterdir() if (p / MANIFEST).is_file())
    if not domains:
        console.error(f"no prepared domain under {' '.join(dirs)}")
        return 2
    bad = 0
    for d in domains:
        problems = validate_domain(d, deep=True, fingerprint=fp)
        console.out(f"{'OK  ' if not problems else 'FAIL'} {d}")
        for line in problems:
            console.out(f"     {line}")
        bad += bool(problems)
    return 1 if bad else 0


def _prep_tasks(args: argparse.Namespace) -> int:
    from data_prep.tasks import TaskFile, prepare_task

    spec = validate(TaskFile, read_yaml(args.task), "task")
    out, tokenizer = args.out or spec.out, args.tokenizer or spec.tokenizer
    if out is None or tokenizer is None:
        raise ConfigError(f"{args.task}: out and tokenizer are needed (in the file, or --out/--tokenizer)")
    for task in spec.tasks:
        m = prepare_task(task, out, tokenizer, overwrite=args.overwrite)
        counts = {s: st["examples"] for s, st in m["splits"].items()}
        dropped = sum(st["dropped"] for st in m["splits"].values())
        console.out(f"prepared task '{task.name}' in {out}/{task.name} ({m['seconds']}s): examples {json.dumps(counts)}"
                    + (f", {dropped} dropped (target longer than max_len)" if dropped else ""))
    return 0


def run_prep(args: argparse.Namespace) -> int:
    from data_prep.prepare import PrepError, prepare_domain, skip_summary

    if args.validate:
        return _validate(args.validate, args.tokenizer)
    if args.task:
        return _prep_tasks(args)
    if args.config:
        specs = _specs_from_yaml(args.config)
    else:
        missing = [f for f, v in (("SOURCE", args.source), ("--domain", args.domain), ("--out", args.out),
                                  ("--tokenizer", args.tokenizer), ("--seq-len", args.seq_len)) if v is None]
        if missing:
            raise PrepError(f"missing {', '.join(missing)} (or pass --config YAML / --validate DIR)")
        specs = [{"name": args.domain, "source": args.source, "out": args.out, "tokenizer": args.tokenizer,
                  "seq_len": args.seq_len, "text_field": args.text_field, "min_chars": args.min_chars,
                  "dedup": args.dedup, "val": args.val, "test": args.test, "compression": args.compression,
                  "size_limit": args.size_limit, "workers": args.workers, "overwrite": args.overwrite,
                  "doc_boundary": args.doc_boundary, "revision": args.revision,
                  "max_bad_bytes": args.max_bad_bytes}]
    for spec in specs:
        m = prepare_domain(spec["source"], spec["out"], spec["name"], str(spec["tokenizer"]), int(spec["seq_len"]),
                           prep_options(spec, args.quiet))
        summary = {s: {k: v for k, v in st.items() if k in ("docs", "samples", "tokens")}
                   for s, st in m["splits"].items()}
        console.out(f"prepared domain '{m['domain']}' in {spec['out']}/{m['domain']} ({m['seconds']}s, "
                    f"{m['tokens_per_s']:,} tok/s): {json.dumps(summary)}; {skip_summary(m['source'])}")
    return 0
