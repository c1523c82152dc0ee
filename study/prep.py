"""Each model's view of the study's data: the prepared folder of every domain and of its reference.

A domain given as a raw `source` is prepared once per tokenizer, under `prep.out` (default `<out_dir>/prepared`) in a
folder named by the tokenizer's fingerprint, so GPT-2 S/L/XL share one preparation and a second study over the same
sources reuses it. A preparation is reused only while its recorded spec (source, seq_len, read keys, tokenizer
fingerprint) is the one asked for; anything else prepares it again. A prepared `path` is used as it is: the trainer's
preflight rejects shards made with another tokenizer.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from data_prep import hub
from data_prep.cli import prep_options
from data_prep.console import log
from data_prep.manifest import ManifestError, read_manifest, tokenizer_fingerprint
from data_prep.prepare import prepare_domain
from data_prep.sources import hf_spec, source_kind
from data_prep.tokenize import load_tokenizer
from study.config import StudyCfg, StudyDomain, StudyModel

SPEC = "odyssey_study_prep.json"  # beside each prepared domain folder: what it was prepared from


def check_sources(study: StudyCfg) -> None:
    """Every raw source readable as a source (local ones present, hub datasets reachable), before anything is
    prepared or tracked."""
    for dom in study.domains + [m.reference for m in study.model_list]:
        if dom.source is not None and source_kind(dom.source) == "hf_load":
            hub.require_dataset(hf_spec(dom.source)[0], dom.source, dom.revision or study.prep.revision)


def fingerprint_key(fp: dict) -> str:
    """A short folder name for a tokenizer: its vocabulary and the BOS/EOS it puts around documents."""
    ident = json.dumps([fp["vocab_sha256"], fp["bos_id"], fp["eos_id"]])
    return hashlib.sha256(ident.encode()).hexdigest()[:12]


def prep_root(study: StudyCfg) -> Path:
    return Path(study.prep.out).resolve() if study.prep.out else study.out / "prepared"


def model_tokenizer(model: StudyModel):
    return load_tokenizer(model.tokenizer or model.path, f"model '{model.name}' tokenizer", model.trust_remote_code)


def planned_paths(study: StudyCfg, model: StudyModel, fp: dict | None) -> dict[str, Path]:
    """{domain or reference name: folder} for one model: a prepared `path` as given, a raw source's place under
    prep.out, whether or not it is prepared yet (none without the tokenizer's fingerprint `fp`, which names that
    place)."""
    doms = study.domains + [model.reference]
    paths = {d.name: Path(d.path) for d in doms if d.path is not None}
    if fp is not None:
        root = prep_root(study) / fingerprint_key(fp)
        paths.update({d.name: root / d.name for d in doms if d.source is not None})
    return paths


def model_paths(study: StudyCfg, model: StudyModel, tokenizer=None) -> dict[str, Path]:
    """planned_paths, preparing (or reusing) what comes from raw sources."""
    sources = [d for d in study.domains + [model.reference] if d.source is not None]
    if sources and tokenizer is None:
        tokenizer = model_tokenizer(model)
    fp = tokenizer_fingerprint(tokenizer) if sources else None
    paths = planned_paths(study, model, fp)
    for dom in sources:
        spec, root = prep_spec(study, dom, fp), paths[dom.name].parent
        if _prepared(root, dom.name) == spec:
            continue
        log(f"preparing {dom.name} for model {model.name} ({fp['name']}, seq_len {spec['seq_len']}) in {root}",
            tag="study")
        opts = prep_options({**spec, "workers": study.prep.workers, "overwrite": True}, quiet=True)
        m = prepare_domain(dom.source, root, dom.name, model.tokenizer or model.path, spec["seq_len"], opts)
        (root / f"{dom.name}.{SPEC}").write_text(json.dumps(spec, indent=2))
        log(f"prepared {dom.name}: {m['splits']['train']['tokens']:,} train tokens "
            f"({m['splits']['test']['samples']} test samples) from {m['splits_from']} splits", tag="study")
    return paths


def prep_spec(study: StudyCfg, dom: StudyDomain, fp: dict) -> dict:
    """What a preparation depends on: the study's prep keys, then the domain's own, and the tokenizer as its
    fingerprint (not its path: models that share a tokenizer, like GPT-2 S/L/XL, share the preparation)."""
    read = {**study.prep.model_dump(exclude_none=True, exclude={"out", "workers"}), **dom.model_dump(exclude_none=True)}
    return {**read, "vocab_sha256": fp["vocab_sha256"], "bos_id": fp["bos_id"], "eos_id": fp["eos_id"]}


def _prepared(root: Path, name: str) -> dict | None:
    """The spec a complete preparation under root/name was made from (None: none there, or incomplete)."""
    spec = root / f"{name}.{SPEC}"
    try:
        read_manifest(root / name)
        return json.loads(spec.read_text())
    except (ManifestError, OSError, ValueError):
        return None


def train_samples(path: Path) -> tuple[int, int] | None:
    """(train samples, seq_len) of a prepared domain, or None where it is not prepared yet."""
    try:
        m = read_manifest(path)
    except ManifestError:
        return None
    return m["splits"]["train"]["samples"], m["seq_len"]
