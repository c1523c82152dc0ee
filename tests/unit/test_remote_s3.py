"""Remote shards through a real S3-compatible server (moto's server on loopback): prep writes s3://…, the trainer's
readers stream the same rows back, and a training run reads its data from there."""
import subprocess
import sys

import numpy as np
import pytest

from data_prep.prepare import PrepError, PrepOptions, prepare_domain
from data_prep.shards import TOKENS, open_split
from tests import tiny
from tests.s3server import moto_s3

SEQ = 32


@pytest.fixture(scope="module")
def s3():
    with moto_s3("odyssey-test") as url:
        yield url


def rows(**split):
    ds = open_split(**split)
    return np.stack([ds[i][TOKENS] for i in range(ds.num_samples)])


def test_prep_to_s3_and_read_back(tmp_path, assets, s3):
    import boto3

    src = tiny.write_text_dir(tmp_path / "src", tiny.prose_docs(120, seed=4))
    opts = PrepOptions(progress=False, workers=0)
    prepare_domain(src, tmp_path / "local", "prose", str(assets["model"]), SEQ, opts)
    m = prepare_domain(src, "s3://odyssey-test/domains", "prose", str(assets["model"]), SEQ, opts)
    keys = {o["Key"] for o in boto3.client("s3", endpoint_url=s3).list_objects_v2(
        Bucket="odyssey-test", Prefix="domains/prose/")["Contents"]}
    assert "domains/prose/manifest.json" in keys and "domains/prose/train/index.json" in keys
    assert any(k.endswith(".mds.zstd") for k in keys)
    with pytest.raises(PrepError, match="already exists"):
        prepare_domain(src, "s3://odyssey-test/domains", "prose", str(assets["model"]), SEQ, opts)

    from trainer.data import open_domain

    dom = open_domain("prose", "s3://odyssey-test/domains/prose", tmp_path / "cache")
    assert dom.manifest["splits"] == m["splits"] and dom.remote == "s3://odyssey-test/domains/prose"
    for split in ("train", "test"):
        assert np.array_equal(rows(**dom.split(split)), rows(local=tmp_path / "local" / "prose" / split))


def test_training_streams_from_s3(tmp_path, assets, s3):
    prepare_domain(assets["prose_src"], "s3://odyssey-test/train-domains", "prose", str(assets["model"]), 64,
                   PrepOptions(progress=False, workers=0))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""
model: {{path: {assets['model']}}}
data: {{streams: [{{name: prose, path: s3://odyssey-test/train-domains/prose}}], cache_dir: {tmp_path / 'cache'}}}
run: {{out_dir: {tmp_path / 'runs'}, name: s3, max_steps: 3}}
eval: {{interval: 0, max_samples: 8}}
""")
    r = subprocess.run([sys.executable, "-m", "odyssey", "train", str(cfg)], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "step 3/3" in r.stdout
    assert any((tmp_path / "cache" / "prose" / "train").glob("shard.*.mds")), "shards were streamed into the cache"


def test_missing_remote_domain_is_one_line(tmp_path, assets, s3):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {{path: {assets['model']}}}\n"
                   f"data: {{streams: [{{name: x, path: s3://odyssey-test/nowhere/x}}]}}\n"
                   f"run: {{out_dir: {tmp_path / 'runs'}}}\n")
    r = subprocess.run([sys.executable, "-m", "odyssey", "train", str(cfg)], capture_output=True, text=True,
                       timeout=300)
    errors = [line for line in r.stderr.splitlines() if line.startswith("odyssey: error")]
    assert r.returncode == 2 and len(errors) == 1 and "cannot read s3://odyssey-test/nowhere/x/manifest.json" in \
        errors[0], r.stderr
