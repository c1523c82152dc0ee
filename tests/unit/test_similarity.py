"""Similarity measures: exact values on toy inputs, and on real shards identical domains give ~0 distance while a
shuffled-word copy is farther than the domain itself (and unrelated text farther still)."""
import json
import random

import numpy as np
import pytest

from data_prep.prepare import PrepOptions, prepare_domain
from data_prep.similarity import MEASURES, frechet, jsd, mmd_rbf
from tests import tiny
from tests.cli import odyssey


def test_measures_on_toy_inputs():
    p = np.array([0.5, 0.5, 0.0, 0.0])
    q = np.array([0.0, 0.0, 0.5, 0.5])
    assert jsd(p, p) == 0.0 and jsd(p, q) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8))
    assert mmd_rbf(x, x) == pytest.approx(0.0, abs=1e-12)
    assert frechet(x, x) == pytest.approx(0.0, abs=1e-6)
    # a shifted Gaussian: Fréchet ≈ |shift|² since the covariances match
    assert frechet(x, x + 2.0) == pytest.approx(8 * 4.0, rel=0.05)
    assert mmd_rbf(x, x + 2.0) > mmd_rbf(x, x + 0.5) > 0


@pytest.fixture(scope="module")
def domains(assets, tmp_path_factory):
    root = tmp_path_factory.mktemp("sim")
    rng = random.Random(0)
    shuffled = [" ".join(rng.sample(d.split(), len(d.split()))) for d in assets["prose_docs"]]
    src = tiny.write_text_dir(root / "src", shuffled)
    prepare_domain(src, root / "domains", "prose_shuffled", str(assets["model"]), 64,
                   PrepOptions(progress=False, workers=0))
    return {"prose": assets["domains"] / "prose", "prose_shuffled": root / "domains" / "prose_shuffled",
            "code": assets["domains"] / "code"}, root


def test_similarity_cli_orders_domains_and_logs(domains, assets):
    paths, root = domains
    out = root / "result" / "similarity.json"
    r = odyssey(["similarity", "--reference", paths["prose"], "--domains", *paths.values(), "--out", out,
                 "--chunks", "48"])
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())["to_reference"]
    same, shuf, code = res["prose"], res["prose_shuffled"], res["code"]
    for m in ("unigram_jsd", "emb_mmd", "emb_frechet"):
        assert same[m] == pytest.approx(0.0, abs=1e-6), m
        assert 0 < shuf[m] < code[m], m
    for m in ("unigram_cosine", "emb_cosine"):
        assert same[m] == pytest.approx(1.0, abs=1e-6), m
        assert code[m] < shuf[m] < 1.0, m
    assert (out.parent / "similarity_heatmap.png").stat().st_size > 10_000

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{out.parent}/mlflow.db")
    run = client.search_runs([client.get_experiment_by_name("odyssey-similarity").experiment_id])[0]
    for d in paths:
        for m in MEASURES:
            assert run.data.metrics[f"similarity/{d}/{m}"] == pytest.approx(res[d][m])
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "similarity")}
    assert arts == {"similarity/similarity.json", "similarity/similarity_heatmap.png"}


def test_similarity_not_a_domain(tmp_path, assets):
    r = odyssey(["similarity", "--reference", tmp_path, "--domains", assets["domains"] / "prose"])
    assert r.returncode == 2 and "no manifest.json" in r.stderr
