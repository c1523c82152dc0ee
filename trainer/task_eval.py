"""Score a model on a prepared task's held-out examples, k-shot, data-parallel across ranks: classification by the
summed log-likelihood of each label word's tokens after the prompt (its tokens in context, however many), generation
by greedy decoding up to `max_new_tokens`, stripped and cut at the first blank line of what the model generated,
against the target by Rouge-L.

Every rank runs the same number of batches (short ranks repeat example 0 with weight 0), so under ZeRO-3 the
collective forwards, and `generate(synced_gpus=True)` (under ZeRO-3 only: `synced_generation`), line up. Scores
are summed on the device and all-reduced once per task. The one scoring path of both the fine-tuning run's eval
points and `odyssey evaluate-tasks`."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

from analysis.task_scores import BLANK_LINE, METRIC, cut_generation, rouge_l
from data_prep.manifest import read_manifest
from data_prep.shards import open_split
from data_prep.task_examples import Encoder, Example
from data_prep.tasks import template_list
from data_prep.tokenize import document_bos
from trainer.config import ConfigError
from trainer.dist import Dist


@dataclass
class TaskSet:
    """One prepared task split to score, with the task's template, kind and label words from its manifest, and the
    demonstration pool for k-shot prompts (the task's training split, or another task folder's)."""
    name: str
    task: str  # the task it tests (its manifest's name): in-domain vs cross-task
    kind: str  # generation | classification
    encoder: Encoder
    rows: object  # random-access rows with fields + target
    label_words: list[str] | None
    pool: object | None  # random-access training rows, for demonstrations

    @property
    def metric(self) -> str:
        return METRIC[self.kind]

    def example(self, i: int, rows=None) -> Example:
        row = (rows or self.rows)[i]
        fields = row["fields"]
        return Example(json.loads(fields) if isinstance(fields, str) else fields, row["target"])

    def demos(self, shots: int) -> list[Example]:
        """The pool's first `shots` examples: one fixed block, as the reference study used."""
        if shots and (self.pool is None or self.pool.num_samples < shots):
            have = 0 if self.pool is None else self.pool.num_samples
            raise ConfigError(f"test set '{self.name}': {shots}-shot needs {shots} demonstrations, its pool has {have}")
        return [self.example(i, self.pool) for i in range(shots)]


def task_set(name: str, task: dict, rows, tokenizer, pool=None, template: int = 0) -> TaskSet:
    """A TaskSet from a task manifest's `task` section and opened rows (a streaming dataset, local or remote),
    prompting with the task's `template`-th template."""
    label_words = list(task["label_words"].values()) if task["kind"] == "classification" else None
    templates = template_list(task["template"])
    if template >= len(templates):
        raise ConfigError(f"test set '{name}': template {template} asked, the task has {len(templates)}")
    encoder = Encoder(tokenizer, templates[template], task["max_len"], document_bos(tokenizer))
    return TaskSet(name, task["name"], task["kind"], encoder, rows, label_words, pool)


def open_task_rows(path: str | Path, split: str, pool_path: str | Path | None = None) -> tuple[dict, object, object]:
    """(the manifest's task section, the split's rows, the demonstration pool: the training split of `pool_path` or
    of the task itself, None when empty). Opened once per test set: each is a StreamingDataset with shared memory."""
    manifest = read_manifest(path)
    if manifest.get("kind") != "task":
        raise ConfigError(f"{path} is not a prepared task (odyssey prep --task)")
    pool_dir = Path(pool_path or path)
    has_pool = read_manifest(pool_dir)["splits"]["train"]["samples"] > 0
    return manifest["task"], open_split(Path(path) / split), open_split(pool_dir / "train") if has_pool else None


def open_task_set(name: str, path: str | Path, split: str, tokenizer, pool_path: str | Path | None = None
                  ) -> TaskSet:
    """A prepared task folder's split, for one tokenizer."""
    task, rows, pool = open_task_rows(path, split, pool_path)
    return task_set(name, task, rows, tokenizer, pool)


def _positions(attention_mask: torch.Tensor) -> torch.Tensor:
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def left_pad(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, n - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, n - len(s):] = 1
    return ids.to(device, non_blocking=True), mask.to(device, non_blocking=True)


def label_logprobs(model, pairs: list[tuple[list[int], list[int]]], n_options: int, pad_id: int,
                   device) -> torch.Tensor:
    """[len(pairs) / n_options, n_options]: the summed log-probability of each option's tokens after its prompt,
    `pairs` holding (prompt ids, option ids) example by example, option by option (Encoder.option_ids). Left padding
    puts every option at the end, so only the last max(option) + 1 positions' logits are computed where the model
    supports `logits_to_keep`."""
    ids, mask = left_pad([p + o for p, o in pairs], pad_id, device)
    tail = max(len(o) for _, o in pairs)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask), use_cache=False,
                   **_keep(model, tail + 1)).logits[:, -(tail + 1):-1].float()
    logp = F.log_softmax(logits, dim=-1).gather(-1, ids[:, -tail:, None]).squeeze(-1)  # [B*L, tail]
    lengths = torch.tensor([len(o) for _, o in pairs], device=device)
    in_option = torch.arange(tail, device=device)[None, :] >= (tail - lengths)[:, None]
    return (logp * in_option).sum(-1).view(-1, n_options)


def _keep(model, n: int) -> dict:
    import inspect

    forward = getattr(model, "module", model).forward
    return {"logits_to_keep": n} if "logits_to_keep" in inspect.signature(forward).parameters else {}


class BlankLineInAnswer(StoppingCriteria):
    """Stops a row once the text it generated (the new tokens only, leading whitespace stripped, as `cut_generation`
    reads it) holds a blank line. transformers' `stop_strings` also look at the prompt, so a template ending in a
    newline ("Headline:\n") stopped at the model's first "\n", leaving an empty answer."""

    def __init__(self, tokenizer, prompt_len: int):
        self.tokenizer, self.prompt_len = tokenizer, prompt_len

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_len:], skip_special_tokens=True)
        return torch.tensor([BLANK_LINE in t.lstrip() for t in texts], device=input_ids.device)


def greedy(model, prompts: list[list[int]], max_new_tokens: int, tokenizer, device, synced: bool) -> list[str]:
    """Greedy continuations, decoded and cut at the first blank line. Greedy means greedy: a fresh GenerationConfig
    without the model folder's defaults, so its sampling and penalty fields (repetition_penalty, no_repeat_ngram_size,
    …) do not change what is scored."""
    module = getattr(model, "module", model)
    pad = tokenizer.pad_token_id or tokenizer.eos_token_id
    ids, mask = left_pad(prompts, pad, device)
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, use_cache=True,
                              pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
    out = module.generate(input_ids=ids, attention_mask=mask, generation_config=config, use_model_defaults=False,
                          synced_gpus=synced,
                          stopping_criteria=StoppingCriteriaList([BlankLineInAnswer(tokenizer, ids.shape[1])]))
    return [cut_generation(t) for t in tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)]


def example_scores(model, ts: TaskSet, examples: list[Example], shots: int, max_new_tokens: int, device,
                   synced: bool) -> torch.Tensor:
    """Per example: 1/0 (the label word with the highest log-likelihood is the target) or Rouge-L."""
    enc, demos = ts.encoder, ts.demos(shots)
    if ts.kind == "classification":
        pairs = [pair for ex in examples for pair in enc.option_ids(ex, demos, ts.label_words)]
        pad = enc.tokenizer.pad_token_id or enc.tokenizer.eos_token_id
        best = label_logprobs(model, pairs, len(ts.label_words), pad, device).argmax(-1)
        gold = torch.tensor([ts.label_words.index(ex.target) for ex in examples], device=device)
        return (best == gold).double()
    prompts = [enc.prompt_ids(ex, demos, enc.max_len - max_new_tokens) for ex in examples]
    texts = greedy(model, prompts, max_new_tokens, enc.tokenizer, device, synced)
    return torch.tensor([rouge_l(t, ex.target.strip()) for t, ex in zip(texts, examples)], dtype=torch.float64,
                        device=device)


def synced_generation(model, dist: Dist) -> bool:
    """Whether `generate` must keep every rank decoding until all are done: under ZeRO-3 only, where each forward
    gathers partitioned parameters collectively (its parameters carry DeepSpeed's `ds_id`). Below stage 3 (zero2,
    a plain model on each rank) every rank holds whole weights, and syncing would only run dummy forwards."""
    if dist.world == 1:
        return False
    first = next(getattr(model, "module", model).parameters(), None)
    return first is not None and hasattr(first, "ds_id")


@torch.no_grad()
def score_task(model, ts: TaskSet, shots: int, max_examples: int | None, micro_batch: int, dist: Dist,
               max_new_tokens: int = 60) -> tuple[float, int]:
    """(mean score, examples scored) over the first `max_examples` rows, strided over ranks."""
    rank, world, device = dist.rank, dist.world, dist.device
    was_training = model.training
    model.eval()
    n = ts.rows.num_samples if max_examples is None else min(ts.rows.num_samples, max_examples)
    mine = list(range(rank, n, world))
    n_batches = -(-(-(-n // world)) // micro_batch)
    sums = torch.zeros(2, dtype=torch.float64, device=device)
    synced = synced_generation(model, dist)
    for b in range(n_batches):
        idx = mine[b * micro_batch:(b + 1) * micro_batch]
        pad = micro_batch - len(idx)
        scores = example_scores(model, ts, [ts.example(i) for i in idx + [0] * pad], shots, max_new_tokens, device,
                                synced)
        weight = torch.tensor([1.0] * len(idx) + [0.0] * pad, dtype=torch.float64, device=device)
        sums += torch.stack([(scores * weight).sum(), weight.sum()])
    if world > 1:
        torch.distributed.all_reduce(sums)
    model.train(was_training)
    return (sums[0] / sums[1].clamp(min=1)).item(), int(sums[1].item())
