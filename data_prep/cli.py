"""`odyssey prep`: one domain source → MDS shards + manifest."""
from __future__ import annotations

import argparse
import json


def add_prep_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prep", help="tokenize, pack and shard one domain source",
                       description="Tokenize a domain source, pack it to seq_len with EOS between documents, split "
                                   "train/val/test by document hash, and write MDS shards plus manifest.json.")
    p.add_argument("source", help="folder of text files, .jsonl, .parquet, or a HF dataset saved with save_to_disk")
    p.add_argument("--domain", required=True, help="domain name; output goes to OUT/DOMAIN")
    p.add_argument("--out", required=True, help="folder that holds prepared domains")
    p.add_argument("--tokenizer", required=True, help="local tokenizer folder (usually the model's)")
    p.add_argument("--seq-len", type=int, required=True)
    p.add_argument("--text-field", default="text", help="field/column with the text (jsonl, parquet, HF)")
    p.add_argument("--val", type=float, default=0.05, help="fraction of documents for validation")
    p.add_argument("--test", type=float, default=0.05, help="fraction of documents for test")
    p.add_argument("--compression", default="zstd", help="MDS compression ('none' to disable)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing prepared domain")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_prep)


def run_prep(args: argparse.Namespace) -> int:
    from data_prep.pack import SplitFractions
    from data_prep.prepare import prepare_domain

    try:
        fractions = SplitFractions(val=args.val, test=args.test)
    except ValueError as err:
        raise SystemExit(f"odyssey prep: {err}") from None
    manifest = prepare_domain(
        args.source, args.out, args.domain, args.tokenizer, args.seq_len, fractions=fractions,
        text_field=args.text_field, compression=None if args.compression == "none" else args.compression,
        overwrite=args.overwrite, progress=not args.quiet,
    )
    summary = {s: {k: v for k, v in st.items() if k in ("docs", "samples", "tokens")} for s, st in manifest["splits"].items()}
    print(f"prepared domain '{manifest['domain']}' in {args.out}/{manifest['domain']}: {json.dumps(summary)}")
    return 0
