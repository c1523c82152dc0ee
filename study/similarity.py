"""The similarity step of a study and of `odyssey similarity`: measure each prepared domain against the reference
(data_prep/similarity.py), write similarity.json and the heatmaps beside it, and log both to an MLflow run."""
from __future__ import annotations

from pathlib import Path

from analysis.plots import similarity_heatmaps
from data_prep import console
from data_prep.similarity import MEASURES, Embedder, SampleCfg, compute, default_embedder_path, write
from data_prep.tokenize import load_tokenizer


def measure(reference: Path, domains: dict[str, Path], tokenizer_path: str, embedder: str | None, sample: SampleCfg,
            out: Path) -> tuple[dict, Path]:
    """(the result of data_prep.similarity.compute, the heatmap png); writes `out` (similarity.json) and the png."""
    result = compute(Path(reference), domains, load_tokenizer(tokenizer_path),
                     Embedder(embedder or default_embedder_path()), sample)
    write(result, out)
    png = similarity_heatmaps(result["pairwise"], out.with_name("similarity_heatmap.png"), MEASURES)
    return result, png


def log_similarity(tracker, result: dict, files: list[Path], prefix: str = "") -> None:
    """`similarity/<prefix><domain>/<measure>` at step 0, and the files under the run's similarity/<prefix>
    artifacts. The prefix is `<model>/` in a study of several models."""
    tracker.log_metrics({f"similarity/{prefix}{d}/{m}": v for d, ms in result["to_reference"].items()
                         for m, v in ms.items()}, step=0)
    for f in files:
        tracker.log_artifact(f, f"similarity/{prefix}".rstrip("/"))


def print_table(result: dict) -> None:
    width = max(len(d) for d in result["to_reference"])
    console.out(f"{'domain':<{width}}  " + "  ".join(f"{m:>14}" for m in MEASURES))
    for d, ms in result["to_reference"].items():
        console.out(f"{d:<{width}}  " + "  ".join(f"{ms[m]:>14.4g}" for m in MEASURES))
