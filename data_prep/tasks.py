"""`odyssey prep --task TASK.yaml`: task examples → MDS shards of (input_ids, labels) per split + manifest.json.

Each row holds the example's token ids and its labels (-100 outside the target and its EOS; data_prep/task_examples.py
says how prompts, demonstrations and truncation work) and, for the evaluation, its template fields and target text. Splits come
from the source where it has them, else from a hash of each example. `max_train` keeps the first N training examples
(the reference study's 2K/4K/6K); a folder with test.jsonl alone is an eval-only set (an out-of-domain test set).
FTICL demonstrations (`demos: k`) come from the training split and go in front of
every training prompt; val and test rows are encoded without them (evaluate-tasks adds its own k-shot blocks).
"""
from __future__ import annotations

import random
import shutil
import time
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from data_prep.config import Section
from data_prep.manifest import tokenizer_fingerprint, write_manifest
from data_prep.pack import SPLITS, SplitFractions, split_of
from data_prep.shards import INPUT_IDS, LABELS, SEGMENTS
from data_prep.prepare import PrepError, swap_into_place
from data_prep.task_examples import ENCODING, Encoder, Example, demo_block, placeholders
from data_prep.task_sources import iter_records, source_stamp, text_field
from data_prep.tokenize import document_bos, load_tokenizer

COLUMNS = {INPUT_IDS: "ndarray:int32", LABELS: "ndarray:int32", SEGMENTS: "ndarray:int32", "fields": "json",
           "target": "str"}


class TaskCfg(Section):
    name: str
    source: str  # .jsonl, a folder of split .jsonl files, or hf://NAME[:CONFIG][@SPLIT]
    kind: Literal["generation", "classification"]
    # the prompt, with {field} where a record field goes (e.g. {input}); the target follows it directly. Several
    # templates (the study's Prompt-1, Prompt-2): training examples take them in turn; evaluation picks one by index
    template: str | list[str] = Field(min_length=1)
    output_field: str = "output"  # generation: the target text
    label_field: str = "label"  # classification: the label, mapped by label_words
    label_words: dict[str, str] | None = None  # classification: label → target text (e.g. {"0": " negative"})
    max_len: int = Field(default=1024, gt=8)
    # training rows hold as many whole examples as fit max_len, in order; attention never crosses examples (the
    # trainer masks by the rows' segments). Val and test rows stay one example each.
    pack: bool = False
    max_train: int | None = Field(default=None, gt=0)
    demos: int = Field(default=0, ge=0)
    demo_mode: Literal["first", "sample"] = "first"
    seed: int = 0
    val: float = Field(default=0.05, ge=0, lt=1)
    test: float = Field(default=0.1, ge=0, lt=1)
    revision: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "TaskCfg":
        fields = {tuple(sorted(placeholders(t))) for t in self.templates}
        if () in fields:
            raise ValueError("template needs a {field} placeholder (e.g. {input}) where the example's text goes")
        if len(fields) > 1:
            raise ValueError(f"the templates must take the same fields (they take {sorted(fields)})")
        if (self.kind == "classification") != (self.label_words is not None):
            raise ValueError("label_words is required for a classification task, and only there")
        SplitFractions(val=self.val, test=self.test)  # val + test below 1: the one home of that rule
        return self

    @property
    def templates(self) -> list[str]:
        return template_list(self.template)


def template_list(template: str | list[str]) -> list[str]:
    """A task's templates, from its config or its manifest's `task` section."""
    return [template] if isinstance(template, str) else list(template)


class TaskFile(Section):
    """`odyssey prep --task TASKS.yaml`: where the shards go, the tokenizer, and the tasks."""
    out: str | None = None
    tokenizer: str | None = None
    tasks: list[TaskCfg] = Field(min_length=1)


def read_examples(cfg: TaskCfg) -> dict[str, list[Example]]:
    """{split: examples}, in source order; a split the source did not name comes from the example's hash."""
    fractions = SplitFractions(val=cfg.val, test=cfg.test)
    out: dict[str, list[Example]] = {s: [] for s in SPLITS}
    names = placeholders(cfg.templates[0])
    for rec in iter_records(cfg.source, cfg.revision):
        fields = {name: text_field(rec, name) for name in names}
        if cfg.kind == "classification":
            label = text_field(rec, cfg.label_field)
            if label not in cfg.label_words:
                raise PrepError(f"{rec.key}: label {label!r} has no label word (label_words: {sorted(cfg.label_words)})")
            target = cfg.label_words[label]
        else:
            target = text_field(rec, cfg.output_field)
        key = "\x00".join([*fields.values(), target])
        out[rec.split or split_of(key, fractions)].append(Example(fields, target))
    if cfg.max_train:
        out["train"] = out["train"][:cfg.max_train]
    if not any(out.values()):
        raise PrepError(f"task '{cfg.name}': no examples in {cfg.source}")
    return out


def prepare_task(cfg: TaskCfg, out_dir: str | Path, tokenizer_path: str, overwrite: bool = False) -> dict:
    """Writes out_dir/<task>/{train,val,test}/ + manifest.json, atomically; returns the manifest."""
    from streaming import MDSWriter

    target_dir = Path(out_dir) / cfg.name
    if target_dir.exists() and not overwrite:
        raise PrepError(f"{target_dir} already exists; pass --overwrite to replace it")
    started = time.time()
    tokenizer = load_tokenizer(tokenizer_path)
    stamp = source_stamp(cfg.source)  # before reading: a source rewritten meanwhile is prepared again next time
    examples = read_examples(cfg)
    encoders = [Encoder(tokenizer, t, cfg.max_len, document_bos(tokenizer)) for t in cfg.templates]
    rng = random.Random(cfg.seed)
    tmp = Path(out_dir) / f".{cfg.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    stats = {}
    try:
        for split, items in examples.items():
            dropped, rows, tokens, target_tokens = sum(e.dropped for e in encoders), 0, 0, 0
            packer = Packer(cfg.max_len if cfg.pack and split == "train" else 0)
            with MDSWriter(out=str(tmp / split), columns=COLUMNS, compression="zstd") as writer:
                for i, ex in enumerate(items):
                    encoder = encoders[i % len(encoders)] if split == "train" else encoders[0]
                    demos = demo_block(examples["train"], cfg.demos, cfg.demo_mode, rng, ex) if split == "train" \
                        else []
                    encoded = encoder.encode(ex, demos)
                    if encoded is None:
                        continue
                    for row in packer.add(*encoded, ex):
                        writer.write(row)
                    rows, tokens = rows + 1, tokens + len(encoded[0])
                    target_tokens += int((encoded[1] >= 0).sum())
                for row in packer.flush():
                    writer.write(row)
            stats[split] = {"examples": rows, "samples": packer.rows, "tokens": tokens, "target_tokens": target_tokens,
                            "dropped": sum(e.dropped for e in encoders) - dropped}
        # seq_len: the length rows are padded to for evaluation (the trainer pads training batches to their longest)
        manifest = {"kind": "task", "domain": cfg.name, "task": cfg.model_dump(mode="json"), "seq_len": cfg.max_len,
                    "encoding": ENCODING, "source_stamp": stamp,
                    "tokenizer": tokenizer_fingerprint(tokenizer), "splits": stats,
                    "seconds": round(time.time() - started, 1)}
        write_manifest(tmp, manifest)
        swap_into_place(tmp, target_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


class Packer:
    """Whole examples into rows of at most `max_len` tokens, in order (0: one example per row). Each row records
    which example each token belongs to (SEGMENTS), and the fields and target of its first example (the
    demonstration pool of evaluate-tasks reads those)."""

    def __init__(self, max_len: int):
        self.max_len, self.rows = max_len, 0
        self.parts: list[tuple] = []

    def add(self, ids, labels, ex: Example) -> list[dict]:
        out = []
        if self.parts and sum(len(p[0]) for p in self.parts) + len(ids) > self.max_len:
            out = self.flush()
        self.parts.append((ids, labels, ex))
        return out + ([] if self.max_len else self.flush())

    def flush(self) -> list[dict]:
        if not self.parts:
            return []
        ids, labels, first = np.concatenate([p[0] for p in self.parts]), np.concatenate([p[1] for p in self.parts]), \
            self.parts[0][2]
        segments = np.concatenate([np.full(len(p[0]), i, dtype=np.int32) for i, p in enumerate(self.parts)])
        self.parts, self.rows = [], self.rows + 1
        return [{INPUT_IDS: ids, LABELS: labels, SEGMENTS: segments, "fields": first.fields, "target": first.target}]
