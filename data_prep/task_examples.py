"""One task example → (input_ids, labels) for target-only fine-tuning, with optional in-context demonstrations (FTICL).

    [BOS] demo_1 "\\n\\n" … demo_k "\\n\\n" prompt | target EOS
    labels: -100 ……………………………………………………………… | target EOS

The prompt is the task's template with the example's fields in its `{field}` placeholders (`{input}`, or
`{premise}` and `{hypothesis}` for a pair task); a demonstration is the same template filled with a pool example,
followed by that example's target. The target's ids are the tokens it gets in context: prompt + target is tokenized
as one text and split where the prompt ends (`split_ids`), so training teaches, and evaluation scores, the tokens
the text really produces after the prompt. Tokenized on its own, a target can start differently: a Llama-2-style
SentencePiece tokenizer gives " positive" alone a spurious "▁" piece (id 29871 in Llama-2's vocabulary). Too long an
example loses tokens from the left of its prompt (demonstrations first), never from the target; an example whose
target does not fit is dropped and counted. BOS starts the sequence where the tokenizer adds one; EOS ends every
target.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

import numpy as np

from data_prep.shards import IGNORE

DEMO_SEPARATOR = "\n\n"
# the encoding rule's version, written to every task manifest: 2 = targets tokenized in context (split_ids); a task
# study prepares a folder of another version again
ENCODING = 2
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

    def split_ids(self, prompt: str, target: str) -> tuple[list[int], list[int]]:
        """(prompt ids, target ids) of `prompt + target` tokenized as one text, split at the prompt's last character
        by the tokenizer's offsets. A token that holds characters of both (a template's trailing space merged into
        the target's first word: "Answer: " + "yes" → "▁yes") goes to the target, so the prompt ids are the tokens
        wholly inside the prompt and the target ids cover every character of the target."""
        enc = self.tokenizer(prompt + target, add_special_tokens=False, return_offsets_mapping=True)
        ids, boundary = enc["input_ids"], len(prompt)
        cut = next((i for i, (_, end) in enumerate(enc["offset_mapping"]) if end > boundary), len(ids))
        return ids[:cut], ids[cut:]

    def fit(self, prompt_ids: list[int], room: int) -> list[int]:
        """[BOS] + the prompt's ids, cut from the left (demonstrations first) to at most `room` ids in all."""
        head = [] if self.bos_id is None else [self.bos_id]
        keep = max(room - len(head), 0)
        return head + (prompt_ids[len(prompt_ids) - keep:] if len(prompt_ids) > keep else prompt_ids)

    def prompt_ids(self, example: Example, demos: list[Example], room: int) -> list[int]:
        """A generation prompt: [BOS] + the prompt's ids (tokenized alone: no target follows), cut to `room`."""
        return self.fit(self.tokenizer(self.prompt(example, list(demos)), add_special_tokens=False)["input_ids"],
                        room)

    def option_ids(self, example: Example, demos: list[Example], options: list[str]) -> list[tuple[list, list]]:
        """For each option (a label word): (the fitted prompt, the option's ids in context), the same split as
        training's; every option's prompt is cut to the room the longest option leaves."""
        prompt = self.prompt(example, list(demos))
        pairs = [self.split_ids(prompt, option) for option in options]
        room = self.max_len - max(len(o) for _, o in pairs)
        return [(self.fit(p, room), o) for p, o in pairs]

    def encode(self, example: Example, demos: list[Example] = ()) -> tuple[np.ndarray, np.ndarray] | None:
        """(input_ids, labels) as int32 arrays of equal length ≤ max_len, or None (dropped) when the target and its
        EOS (and BOS) do not fit."""
        prompt, target = self.split_ids(self.prompt(example, list(demos)), example.target)
        target = target + [self.tokenizer.eos_token_id]
        room = self.max_len - len(target)
        if room - (self.bos_id is not None) <= 0:
            self.dropped += 1
            return None
        prompt = self.fit(prompt, room)
        ids = np.array(prompt + target, dtype=np.int32)
        labels = np.array([IGNORE] * len(prompt) + target, dtype=np.int32)
        return ids, labels


def demo_block(pool: list[Example], k: int, mode: str, rng: random.Random, exclude: Example | None = None
               ) -> list[Example]:
    """k demonstrations, never the example itself: the pool's first k (`first`, the reference study's choice: the
    same block for every example; a training example among them gets the (k+1)-th in its place) or k drawn per
    example (`sample`, seeded). One draw of k + 1 per example, not a copy of the pool: a 100k-example training split
    stays linear."""
    if k <= 0:
        return []
    if mode == "first":
        return [p for p in pool[:k + 1] if p is not exclude][:k]
    drawn = rng.sample(pool, min(k + 1, len(pool)))
    return [p for p in drawn if p is not exclude][:k]
