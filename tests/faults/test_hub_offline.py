"""Hub names on a machine that cannot fetch them: the real `odyssey` command in a subprocess, with an empty HF cache
(HF_HOME in tmp) and either HF_HUB_OFFLINE=1 or a hub endpoint on a closed local port. Each command ends with one
line that names the hub id, what was tried and how to download it ahead, exit 2, no traceback; offline at once,
unreachable after one short retry (not huggingface_hub's backoff of ~25 s per file). A gated repo (a local server that
answers as the hub does for one) says so; a model in the cache is used offline as before."""
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

HUB_MODEL = "HuggingFaceTB/SmolLM2-135M"
HUB_DATASET = "stanfordnlp/imdb"
OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_ENDPOINT", "HF_TOKEN",
                "HF_HUB_CACHE", "HF_DATASETS_CACHE", "HUGGINGFACE_HUB_CACHE")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hub_env(tmp_path, **extra) -> dict:
    """This environment without any hub setting or token, an empty cache, and `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in OFFLINE_VARS}
    return {**env, "HF_HOME": str(tmp_path / "hf_home"), "DS_ACCELERATOR": "cpu", **extra}


def odyssey(args, env, cwd):
    start = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "odyssey", *args], capture_output=True, text=True, cwd=cwd, env=env,
                       timeout=300)
    return r, time.monotonic() - start


def assert_hub_line(r, name: str, tried: str) -> str:
    """Exit 2, and stderr is one `odyssey: error:` line naming `name`, what was tried and how to download it."""
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and "[WARNING]" not in ln]
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    line = lines[0]
    assert line.startswith("odyssey: error: ") and name in line and tried in line, line
    assert f"hf download {name}" in line, line
    return line


@pytest.fixture
def offline(tmp_path):
    return hub_env(tmp_path, HF_HUB_OFFLINE="1")


@pytest.fixture
def unreachable(tmp_path):
    return hub_env(tmp_path, HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}")


def write_study(tmp_path, assets):
    study = tmp_path / "study.yaml"
    study.write_text(f"name: s\nout_dir: {tmp_path / 'out'}\n"
                     f"models:\n  - {{name: tiny, path: {assets['model']}}}\n  - {{name: smol, path: {HUB_MODEL}}}\n"
                     f"reference: {{name: ref, path: {assets['domains'] / 'code'}}}\n"
                     f"domains:\n  - {{name: prose, path: {assets['domains'] / 'prose'}}}\n"
                     f"  - {{name: code, path: {assets['domains'] / 'code'}}}\n")
    return study


def write_train_config(tmp_path, assets, model: str):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {{path: {model}}}\ndata: {{streams: [{{name: d, path: {assets['domains'] / 'prose'}}}]}}\n"
                   f"run: {{out_dir: {tmp_path / 'runs'}, max_steps: 2}}\n")
    return cfg


def test_study_dry_run_prints_the_plan_it_can_then_one_line(tmp_path, assets, offline, unreachable):
    study = write_study(tmp_path, assets)
    r, offline_s = odyssey(["study", str(study), "--dry-run"], offline, tmp_path)
    assert_hub_line(r, HUB_MODEL, "HF_HUB_OFFLINE=1")
    rows = {ln.split()[0]: ln for ln in r.stdout.splitlines() if ln.split()}
    assert "?" not in rows["tiny"].split()[1] and rows["smol"].split()[1] == "?", r.stdout  # tiny planned, smol not
    assert HUB_MODEL in rows["smol"] and "tiny/prose" in rows and "smol/*" in rows, r.stdout
    r, unreachable_s = odyssey(["study", str(study), "--dry-run"], unreachable, tmp_path)
    line = assert_hub_line(r, HUB_MODEL, "is unreachable")
    # one short retry: the same command's time offline (imports alike), plus far less than the library's backoff
    assert unreachable_s < offline_s + 10, (unreachable_s, offline_s, line)


@pytest.mark.parametrize("where", ["offline", "unreachable"])
def test_prep_with_a_hub_tokenizer(tmp_path, assets, where, request):
    env = request.getfixturevalue(where)
    r, _ = odyssey(["prep", str(assets["prose_src"]), "--domain", "x", "--out", str(tmp_path / "out"),
                    "--tokenizer", HUB_MODEL, "--seq-len", "32"], env, tmp_path)
    assert_hub_line(r, HUB_MODEL, "HF_HUB_OFFLINE=1" if where == "offline" else "2 tries in")
    assert not (tmp_path / "out" / "x").exists()


@pytest.mark.parametrize("where", ["offline", "unreachable"])
def test_prep_from_a_hub_dataset(tmp_path, assets, where, request):
    env = request.getfixturevalue(where)
    r, _ = odyssey(["prep", f"hf://{HUB_DATASET}", "--domain", "x", "--out", str(tmp_path / "out"), "--quiet",
                    "--tokenizer", str(assets["model"]), "--seq-len", "32"], env, tmp_path)
    line = assert_hub_line(r, HUB_DATASET, "HF_HUB_OFFLINE=1" if where == "offline" else "2 tries in")
    assert "--repo-type dataset" in line and not (tmp_path / "out" / "x").exists()


@pytest.mark.parametrize("dry_run", [False, True], ids=["preflight", "dry-run"])
@pytest.mark.parametrize("where", ["offline", "unreachable"])
def test_train_with_a_hub_model(tmp_path, assets, where, dry_run, request):
    env = request.getfixturevalue(where)
    cfg = write_train_config(tmp_path, assets, HUB_MODEL)
    r, _ = odyssey(["train", str(cfg)] + (["--dry-run"] if dry_run else []), env, tmp_path)
    assert_hub_line(r, HUB_MODEL, "HF_HUB_OFFLINE=1" if where == "offline" else "2 tries in")
    assert not (tmp_path / "runs").exists()


class GatedHub(BaseHTTPRequestHandler):
    """Answers every request as the hub answers for a gated repo asked without a token."""

    def do_HEAD(self):
        self.send_response(401)
        self.send_header("X-Error-Code", "GatedRepo")
        self.send_header("X-Error-Message", "Access to this model is restricted. You must have access to it and be "
                                            "authenticated to access it. Please log in.")
        self.end_headers()

    do_GET = do_HEAD

    def log_message(self, *args):
        pass


def test_a_gated_repo_without_a_token_is_one_line(tmp_path, assets):
    server = ThreadingHTTPServer(("127.0.0.1", 0), GatedHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = hub_env(tmp_path, HF_ENDPOINT=f"http://127.0.0.1:{server.server_address[1]}")
        r, _ = odyssey(["prep", str(assets["prose_src"]), "--domain", "x", "--out", str(tmp_path / "out"),
                        "--tokenizer", "meta-llama/Llama-2-7b-hf", "--seq-len", "32"], env, tmp_path)
    finally:
        server.shutdown()
    assert "HF_TOKEN" in assert_hub_line(r, "meta-llama/Llama-2-7b-hf", "a gated repo")


def test_a_model_in_the_cache_is_used_offline(tmp_path, assets, offline):
    """The check looks in the cache first: a hub name whose files are there loads with the network off."""
    snapshot = tmp_path / "hf_home" / "hub" / "models--tiny-org--tiny" / "snapshots" / ("a" * 40)
    shutil.copytree(assets["model"], snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("a" * 40)
    r, _ = odyssey(["prep", str(assets["prose_src"]), "--domain", "x", "--out", str(tmp_path / "out"), "--quiet",
                    "--tokenizer", "tiny-org/tiny", "--seq-len", "32", "--workers", "0"], offline, tmp_path)
    assert r.returncode == 0 and (tmp_path / "out" / "x").is_dir(), r.stderr[-3000:]
    r, _ = odyssey(["train", str(write_train_config(tmp_path, assets, "tiny-org/tiny")), "--dry-run"], offline,
                   tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
