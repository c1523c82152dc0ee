"""Which tokens carry the change: per-token losses now against the base model's (step 0), summarised per vocabulary id,
per token category and per position: NumPy on full [samples, seq_len-1] arrays that every rank holds after
evaluation (see evaluate.py); only rank 0 calls this. `TokenStats` writes one eval's summary under
<run_dir>/tokens/<domain>/ and returns its metrics, tags and files for the caller to log.

Definitions (docs/ANALYSIS.md):
- Δ of a token occurrence = its loss now − its loss under the base model; Δ_v = sum of Δ over occurrences of target id v.
- topk_share = (sum of the k largest Δ_v in the direction of the total change) / (total Δ). With total Δ > 0 (the
  domain got worse) these are the (at most) k ids with the largest positive Δ_v; with total Δ < 0 the k most negative.
- category share = (sum of Δ_v over the ids of a category) / (total Δ); the shares of all categories sum to 1.
- transitions (analysis/transitions.py): each position low or high against a threshold on the base losses, under the
  base model and now (ll, lh, hl, hh); the share of positions and of the total Δ in each class.
"""
from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from analysis.baseline import BaselineCache
from analysis.plots import token_report
from analysis.transitions import CLASSES, low_to_high, low_to_high_markdown, threshold_of, transitions
from data_prep.console import log
from data_prep.disk import write_atomic

CATEGORIES = ("newline_whitespace", "punctuation", "digits", "function_words", "word_continuation", "other")

FUNCTION_WORDS = frozenset("""a about above after again against all am an and any are as at be because been before being
below between both but by can could did do does doing down during each few for from further had has have having he her
here hers herself him himself his how i if in into is it its itself just me more most my myself no nor not now of off on
once only or other our ours ourselves out over own same she should so some such than that the their theirs them
themselves then there these they this those through to too under until up very was we were what when where which while
who whom why will with would you your yours yourself yourselves""".split())


def escape(text: str) -> str:
    """A token as a reader can see it: newlines, tabs and carriage returns escaped, other control chars as \\xNN."""
    out = text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    return "".join(c if c.isprintable() or c == " " else f"\\x{ord(c):02x}" for c in out)


def categorize(piece: str, function_words: frozenset[str] = FUNCTION_WORDS) -> str:
    """Category of one decoded vocabulary entry. Word-initial pieces carry a leading space in byte-level BPE
    (decoded 'Ġthe' → ' the'); an alphabetic piece without one continues a word."""
    if piece == "" or piece.isspace():
        return "newline_whitespace"
    core = piece.strip()
    if all(unicodedata.category(c)[0] in "PS" for c in core):
        return "punctuation"
    if core.isdigit():
        return "digits"
    starts_word = piece[0].isspace()
    if starts_word and core.lower() in function_words:
        return "function_words"
    if not starts_word and core[0].isalpha():
        return "word_continuation"
    return "other"


@dataclass
class Vocab:
    """Decoded text and category of every id, computed once per run from the tokenizer."""

    text: list[str]
    category: np.ndarray  # int index into CATEGORIES

    @classmethod
    def from_tokenizer(cls, tokenizer, function_words: frozenset[str] = FUNCTION_WORDS) -> "Vocab":
        text = piece_texts(tokenizer)
        cats = np.array([CATEGORIES.index(categorize(t, function_words)) for t in text], dtype=np.int8)
        return cls(text, cats)

    def shown(self, i: int) -> str:
        """Id i's text, escaped; with category_name, what analysis/transitions.py reads (it imports nothing here:
        this module imports it)."""
        return escape(self.text[i])

    def category_name(self, i: int) -> str:
        return CATEGORIES[self.category[i]]


BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # SentencePiece byte fallback


def piece_texts(tokenizer) -> list[str]:
    """The text each id stands for, read from its vocabulary piece. Byte-level BPE pieces (GPT-2, GPT-NeoX/OLMo,
    Llama-3) map back through the byte alphabet (Ġ → space, Ċ → newline); SentencePiece pieces (Llama-2, Mistral)
    turn ▁ into a space and byte-fallback pieces like <0x0A> into their byte. Decoding one id alone is wrong for
    SentencePiece: its decoder strips the leading space of a text, so ' the' would read 'the', a word continuation.
    A byte that is only part of a UTF-8 character reads as \\xNN."""
    size = len(tokenizer)
    pieces = tokenizer.convert_ids_to_tokens(list(range(size)))
    decoder = json.dumps(json.loads(tokenizer.backend_tokenizer.to_str()).get("decoder"), ensure_ascii=False)
    if '"ByteLevel"' in decoder:
        from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

        alphabet = {c: b for b, c in bytes_to_unicode().items()}
        return [_from_byte_alphabet(p, alphabet) for p in pieces]
    if "\u2581" in decoder or '"Metaspace"' in decoder:
        return [_from_sentencepiece(p) for p in pieces]
    return [tokenizer.decode([i], clean_up_tokenization_spaces=False) for i in range(size)]  # e.g. WordPiece


def _from_byte_alphabet(piece: str, alphabet: dict[str, int]) -> str:
    if not all(c in alphabet for c in piece):
        return piece  # an added token outside the byte alphabet
    return bytes(alphabet[c] for c in piece).decode("utf-8", errors="backslashreplace")


def _from_sentencepiece(piece: str) -> str:
    byte = BYTE_PIECE.fullmatch(piece)
    if byte:
        value = int(byte.group(1), 16)
        return chr(value) if value < 0x80 else f"\\x{value:02x}"
    return piece.replace("\u2581", " ")


def per_id(targets: np.ndarray, base: np.ndarray, current: np.ndarray, vocab_size: int) -> dict[str, np.ndarray]:
    t = targets.reshape(-1)
    count = np.bincount(t, minlength=vocab_size)
    base_sum = np.bincount(t, weights=base.reshape(-1).astype(np.float64), minlength=vocab_size)
    cur_sum = np.bincount(t, weights=current.reshape(-1).astype(np.float64), minlength=vocab_size)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"count": count, "mean_base_loss": base_sum / count, "mean_loss": cur_sum / count,
                "delta_sum": cur_sum - base_sum}


def summarize(targets: np.ndarray, base: np.ndarray, current: np.ndarray, vocab: Vocab, top_k: int = 20,
              n_buckets: int = 16) -> dict:
    """Everything logged for one domain at one eval: scalars, the per-id table, top tokens, histogram, positions.
    Positions without a target (label -100: a task example's prompt and padding) are left out."""
    scored = targets >= 0
    stats = per_id(targets[scored], base[scored], current[scored], len(vocab.text))
    delta = stats["delta_sum"]
    total = float(delta.sum())
    seen = np.flatnonzero(stats["count"])
    order = seen[np.argsort(-delta[seen], kind="stable")]
    worst = order[:top_k][delta[order[:top_k]] > 0]
    best = order[::-1][:top_k][delta[order[::-1][:top_k]] < 0]
    carriers = worst if total >= 0 else best
    topk_share = float(delta[carriers].sum() / total) if total else 0.0
    cat_delta = np.bincount(vocab.category, weights=delta, minlength=len(CATEGORIES))
    cat_count = np.bincount(vocab.category, weights=stats["count"], minlength=len(CATEGORIES))
    token_delta = current[scored] - base[scored]
    edges = np.linspace(0, targets.shape[1], n_buckets + 1).astype(int)
    position = [{"start": int(a), "end": int(b), "mean_base_loss": float(base[:, a:b][scored[:, a:b]].mean()),
                 "mean_loss": float(current[:, a:b][scored[:, a:b]].mean())}
                for a, b in zip(edges[:-1], edges[1:]) if b > a and scored[:, a:b].any()]
    hist, hist_edges = np.histogram(token_delta, bins=60)

    def rows(ids):
        return [{"id": int(i), "token": escape(vocab.text[i]), "category": CATEGORIES[vocab.category[i]],
                 "count": int(stats["count"][i]), "delta_sum": float(delta[i]),
                 "mean_base_loss": float(stats["mean_base_loss"][i]), "mean_loss": float(stats["mean_loss"][i])}
                for i in ids]

    return {
        "total_delta": total,
        "tokens": int(scored.sum()),
        "topk_share": topk_share,
        "category_share": {c: (float(cat_delta[i] / total) if total else 0.0) for i, c in enumerate(CATEGORIES)},
        "category_count": {c: int(cat_count[i]) for i, c in enumerate(CATEGORIES)},
        "top_degrading": rows(worst),
        "top_improving": rows(best),
        "table_ids": seen,
        "table": {k: v[seen] for k, v in stats.items()},
        "histogram": {"counts": hist.tolist(), "edges": hist_edges.tolist()},
        "position": position,
    }


def table_frame(summary: dict, vocab: Vocab):
    """The per-id table as a pandas DataFrame (written to Parquet), sorted by summed Δloss, worst first."""
    import pandas as pd

    ids = summary["table_ids"]
    df = pd.DataFrame({"id": ids, "token": [escape(vocab.text[i]) for i in ids],
                       "category": [CATEGORIES[vocab.category[i]] for i in ids], **summary["table"]})
    return df.sort_values("delta_sum", ascending=False, kind="stable").reset_index(drop=True)


class TokenStats:
    """Token statistics of one eval against step 0, per domain: at step 0 the per-token losses are cached; later the
    per-id, per-category, per-position and transition comparison is written under <run_dir>/tokens/<domain>/step_<N>.*
    `threshold`: (kind, value) of the low/high loss threshold, transitions.threshold_of."""

    def __init__(self, run_dir: Path, cache: BaselineCache, vocab: Vocab, top_k: int,
                 threshold: tuple[str, float] = ("quantile", 0.5)):
        self.run_dir, self.cache, self.vocab, self.top_k = Path(run_dir), cache, vocab, top_k
        self.threshold = threshold

    def __call__(self, results: dict, step: int) -> tuple[dict[str, float], dict[str, str], list[tuple[Path, str]]]:
        """(metrics, tags, [(file, artifact folder)]) for one eval; `results[name]` has .targets and .losses."""
        metrics: dict[str, float] = {}
        tags: dict[str, str] = {}
        files: list[tuple[Path, str]] = []
        for name, r in results.items():
            if step == 0:
                meta = self.cache.save(name, r.targets, r.losses)
                tags.update({f"baseline.{name}.eval_set_hash": meta["eval_set_hash"],
                             f"baseline.{name}.tokens": str(meta["tokens"]), "baseline.model_hash": meta["model_hash"]})
                continue
            base = self.cache.load(name, r.targets)
            if base is None:
                log(f"no step-0 baseline cached for '{name}' matching this eval set; token stats skipped")
                continue
            summary = summarize(r.targets, base, r.losses, self.vocab, self.top_k)
            metrics[f"tokens/{name}/topk_share"] = summary["topk_share"]
            for cat, share in summary["category_share"].items():
                metrics[f"tokens/{name}/cat/{cat}_share"] = share
            summary.update(self._transitions(r.targets, base, r.losses))
            metrics.update(transition_metrics(name, summary["transitions"]))
            files += [(f, f"tokens/{name}") for f in self._write(summary, name, step)]
        return metrics, tags, files

    def _transitions(self, targets: np.ndarray, base: np.ndarray, current: np.ndarray) -> dict:
        """The transition shares and the low→high tokens, against a threshold on this domain's base losses."""
        threshold = threshold_of(base[targets >= 0], *self.threshold)
        return {"transitions": transitions(targets, base, current, self.vocab.category, threshold, CATEGORIES),
                "low_to_high": low_to_high(targets, base, current, threshold, self.vocab, self.top_k)}

    def _write(self, summary: dict, name: str, step: int) -> list[Path]:
        """Each file whole or not at all (a full disk: DiskFull naming it); the eval is run again on resume."""
        folder = self.run_dir / "tokens" / name
        frame = table_frame(summary, self.vocab)
        write_atomic(folder / f"step_{step}.parquet", lambda tmp: frame.to_parquet(tmp, index=False))
        keep = ("total_delta", "tokens", "topk_share", "category_share", "category_count", "top_degrading",
                "top_improving", "position", "transitions", "low_to_high")
        write_atomic(folder / f"step_{step}.json", json.dumps({k: summary[k] for k in keep}, indent=1))
        token_report(summary, name, step, folder / f"step_{step}.png")
        table = low_to_high_markdown(summary["low_to_high"], name, step, summary["transitions"]["threshold"])
        write_atomic(folder / f"step_{step}_low_to_high.md", table)
        return [folder / f"step_{step}.{suffix}" for suffix in ("parquet", "json", "png")] + \
            [folder / f"step_{step}_low_to_high.md"]


def transition_metrics(name: str, result: dict) -> dict[str, float]:
    """tokens/<name>/<class>_share, <class>_dloss_share, transition_threshold and cat/<category>/<class>_share."""
    out = {f"tokens/{name}/transition_threshold": result["threshold"]}
    for c in CLASSES:
        out[f"tokens/{name}/{c}_share"] = result["share"][c]
        out[f"tokens/{name}/{c}_dloss_share"] = result["dloss_share"][c]
        for cat, per in result["category"].items():
            out[f"tokens/{name}/cat/{cat}/{c}_share"] = per["share"][c]
    return out
