"""One task example → (input_ids, labels) for target-only fine-tuning, with optional in-context demonstrations (FTICL).

    [BOS] demo_1 "\\n\\n" … demo_k "\\n\\n" prompt | target EOS
    labels: -100 ……………………………………………………………… | target EOS

The prompt is the task's template with the example's fields in its `{field}` placeholders (`{input}`, or
`{premise}` and `{hypothesis}` for a pair task); a demonstration is the same template filled with a pool example,
followed by that example's target. The target is tokenized on its own and appended, so its ids are
exactly the ones an evaluation scores (a label word's ids come from the tokenizer, whatever its length). Too long an
example loses tokens from the left of its prompt (demonstrations first), never from the target; an example whose
target alone does not fit is dropped and counted. BOS starts the sequence where the tokenizer adds one; EOS ends
every target.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

import numpy as np

from data_prep.shards import IGNORE

DEMO_SEPARATOR = "\n\n"
PLACEHOLDER = re.compile(r"\{(\w+)\}")


def placeholders(template: str) -> list[str]:
    """The record fields a template takes, in order of first use."""
    return list(dict.fromkeys(PLACEHOLDER.findall(template)))


def fill(template: str, fields: dict[str, str]) -> str:
    return PLACEHOLDER.sub(lambda m: fields[m.group(1)], template)


@dataclass
class Example:
    fields: dict[str, str]  # the template's placeholders → text
    target: str


@dataclass
class Encoder:
    """Encodes examples of one task for one tokenizer. `bos_id`: data_prep.tokenize.document_bos(tokenizer)."""
    tokenizer: object
    template: str  # e.g. "Summarize:\\n{input}\\nSummary:"; the target follows it
    max_len: int
    bos_id: int | None = None
    dropped: int = field(default=0, init=False)  # examples whose target alone is longer than max_len

    def prompt(self, example: Example, demos: list[Example]) -> str:
        shots = [fill(self.template, d.fields) + d.target for d in demos]
        return DEMO_SEPARATOR.join(shots + [fill(self.template, example.fields)])

    def prompt_ids(self, example: Example, demos: list[Example], room: int) -> list[int]:
        """[BOS] + the prompt's ids, cut from the left (demonstrations first) to at most `room` ids in all."""
        head = [] if self.bos_id is None else [self.bos_id]
        prompt = self.tokenizer(self.prompt(example, list(demos)), add_special_tokens=False)["input_ids"]
        keep = max(room - len(head), 0)
        return head + (prompt[len(prompt) - keep:] if len(prompt) > keep else prompt)

    def target_ids(self, target: str, eos: bool = True) -> list[int]:
        """The target's ids, tokenized on its own (as training saw it), with EOS unless told otherwise."""
        ids = self.tokenizer(target, add_special_tokens=False)["input_ids"]
        return ids + [self.tokenizer.eos_token_id] if eos else ids

    def encode(self, example: Example, demos: list[Example] = ()) -> tuple[np.ndarray, np.ndarray] | None:
        """(input_ids, labels) as int32 arrays of equal length ≤ max_len, or None (dropped) when the target and its
        EOS (and BOS) do not fit."""
        target = self.target_ids(example.target)
        room = self.max_len - len(target)
        if room - (self.bos_id is not None) <= 0:
            self.dropped += 1
            return None
        prompt = self.prompt_ids(example, demos, room)
        ids = np.array(prompt + target, dtype=np.int32)
        labels = np.array([IGNORE] * len(prompt) + target, dtype=np.int32)
        return ids, labels


def demo_block(pool: list[Example], k: int, mode: str, rng: random.Random, exclude: Example | None = None
               ) -> list[Example]:
    """k demonstrations: the pool's first k (`first`, the reference study's choice: the same block for every example)
    or k drawn per example (`sample`, seeded; never the example itself). One draw of k + 1 per example, not a copy
    of the pool: a 100k-example training split stays linear."""
    if k <= 0:
        return []
    if mode == "first":
        return pool[:k]
    drawn = rng.sample(pool, min(k + 1, len(pool)))
    return [p for p in drawn if p is not exclude][:k]
