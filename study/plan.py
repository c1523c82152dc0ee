"""`odyssey study STUDY.yaml --dry-run`: what the study would cost, before any compute.

Per model, from the trainer's own plan (trainer/plan.py: the model built on the meta device from config.json, the
filled DeepSpeed JSON, DeepSpeed's memory estimator): parameters, tokens per step, model-state memory per device, and
GPU-hours per billion training tokens at an assumed peak and MFU. Per run: training tokens and steps from the run's
own step count (trainer.plan.total_steps) over the prepared domain, and its GPU-hours. A domain given as a raw source
has no token count until the setup has prepared it: run `--setup` (it prepares and measures, no training), then
`--dry-run` again. Evals come on top of the training GPU-hours shown. A model or tokenizer named on the hub that this
machine cannot get (offline, not in the cache: data_prep/hub.py) is a row of unknowns with the reason; the plan of
the others is printed, then the command fails with that one line (exit 2).
"""
from __future__ import annotations

import math

from data_prep import console, hub
from data_prep.errors import OdysseyError
from data_prep.manifest import tokenizer_fingerprint
from study.config import StudyCfg, StudyModel
from study.prep import model_tokenizer, planned_paths, train_samples
from study.runs import child_config
from trainer.config import config_from_dict
from trainer.plan import GIB, plan, total_steps

H100_BF16_TFLOPS = 989.4  # the default peak: one H100 SXM, dense bf16 (trainer/meter.py's table)
DEFAULT_MFU = 0.40  # llm-foundry MPT-1B 41.8 %, OLMo-core 1B 39-41 % on H100s


def model_plan(study: StudyCfg, model: StudyModel, world: int, gpus_per_node: int, seconds_per_token) -> dict:
    """The trainer's plan for one model (its first domain's run config) and each of its runs. A model or tokenizer
    named on the hub that this machine cannot get is kept as `hub_error`: the plan shows it, then the command fails."""
    from transformers import AutoConfig

    from trainer.meter import flops_per_token

    try:
        hub.require(model.path, f"model '{model.name}' path", "config")
    except hub.HubError as err:  # no config.json: nothing of this model can be planned
        return unresolved_plan(study, model, err)
    hub_error = None
    try:
        fp = tokenizer_fingerprint(model_tokenizer(model))
    except OdysseyError as err:  # e.g. a tokenizer folder without its files: the data side stays unknown
        hub_error = err if isinstance(err, hub.HubError) else None
        fp, why = None, hub_error.short if hub_error else str(err)
    else:
        why = "not prepared yet: run --setup, then --dry-run again"
    paths = planned_paths(study, model, fp)
    planned = {d.name: str(paths.get(d.name, f"<{d.name}: not prepared>"))
               for d in study.domains + [model.reference]}

    def run_cfg(domain: str, variant: str | None):
        return config_from_dict(child_config(study, model, domain, planned, "dry-run", "file:///dev/null", variant))

    cfg = run_cfg(study.domains[0].name, None)
    seq_len = study.prep.seq_len or cfg.data.seq_len or next(
        (info[1] for d in study.domains if d.name in paths and (info := train_samples(paths[d.name]))), None)
    if seq_len is None:
        raise OdysseyError(f"model {model.name}: no seq_len (set prep.seq_len or train.data.seq_len)")
    p = plan(cfg, world, gpus_per_node, seq_len, None)
    hf = AutoConfig.from_pretrained(model.path, trust_remote_code=model.trust_remote_code)
    per_token = seconds_per_token(flops_per_token(hf, p["params"], seq_len))
    runs = []
    for dom in study.domains:
        info = train_samples(paths[dom.name]) if dom.name in paths else None
        for variant in study.variant_names:  # a variant may change the batch or the run's length
            vcfg = cfg if variant is None else run_cfg(dom.name, variant)
            per_step = p["tokens_per_step"] * vcfg.data.micro_batch * vcfg.optim.accumulation // (
                cfg.data.micro_batch * cfg.optim.accumulation)
            samples = None if info is None else math.ceil(info[0] / (1 - study.variant(variant).replay) / world)
            steps = total_steps(vcfg, per_step, samples)
            tokens = steps * per_step if steps else None
            runs.append({"run": study.run_key(model.name, dom.name, variant), "tokens": tokens, "steps": steps,
                         "gpu_hours": tokens * per_token / 3600 if tokens else None, "why": why})
    return {"model": model.name, "path": model.path, "params": p["params"], "seq_len": seq_len,
            "tokens_per_step": p["tokens_per_step"], "memory": p["memory"],
            "gpu_hours_per_btok": 1e9 * per_token / 3600, "runs": runs, "hub_error": hub_error}


def unresolved_plan(study: StudyCfg, model: StudyModel, hub_error: hub.HubError) -> dict:
    """A model whose config cannot be had here: its rows are unknowns, and the reason is kept for the error line."""
    runs = [{"run": study.run_key(model.name, d.name, v), "tokens": None, "steps": None, "gpu_hours": None,
             "why": "the model is not available here (see its row above)"} for d in study.domains
            for v in study.variant_names]
    return {"model": model.name, "path": model.path, "params": None, "runs": runs, "hub_error": hub_error}


def check_resolved(plans: list[dict]) -> None:
    """Once the plan is printed: a hub name this machine cannot get fails the command, in one line (exit 2)."""
    failed = [p["hub_error"] for p in plans if p["hub_error"]]
    if failed:
        more = f" (and {len(failed) - 1} more model(s): see the plan above)" if len(failed) > 1 else ""
        raise hub.HubError(f"{failed[0]}{more}")


def study_plan(study: StudyCfg, world: int, gpus_per_node: int, peak_tflops: float, mfu: float) -> list[dict]:
    def seconds_per_token(flops: float) -> float:  # GPU-seconds per training token at that peak and MFU
        return flops / (peak_tflops * 1e12 * mfu)

    return [model_plan(study, m, world, gpus_per_node, seconds_per_token) for m in study.model_list]


def _hours(x: float) -> str:
    return f"{x:,.1f}" if x >= 10 else f"{x:.3g}"


def print_study_plan(study: StudyCfg, plans: list[dict], world: int, gpus_per_node: int, peak: float,
                     mfu: float) -> None:
    runs = [r for p in plans for r in p["runs"]]
    variants = f" x {len(study.variants)} variants" if study.variants else ""
    console.out(f"# study {study.name}: {len(runs)} runs ({len(plans)} model(s) x {len(study.domains)} domains"
                f"{variants}), world size {world} ({world // gpus_per_node} node(s) x {gpus_per_node} device(s))")
    console.out(f"# GPU-hours: training steps at {peak:g} TFLOP/s peak per device (--peak-tflops) and {mfu:.0%} MFU "
                f"(--mfu); evals come on top")
    console.out(f"\n{'model':<16} {'parameters':>14} {'seq_len':>7} {'tokens/step':>12} {'model states/device':>20} "
                f"{'GPU-h per 1B tokens':>20}")
    for p in plans:
        if p["params"] is None:
            console.out(f"{p['model']:<16} {'?':>14} {'?':>7} {'?':>12} {'?':>20} {'?':>20}  {p['hub_error'].short}")
            continue
        m = p["memory"]
        mem = f"{m['gpu_bytes'] / GIB:.1f} GiB (ZeRO-{m['stage']})"
        console.out(f"{p['model']:<16} {p['params']:>14,} {p['seq_len']:>7} {p['tokens_per_step']:>12,} {mem:>20} "
                    f"{_hours(p['gpu_hours_per_btok']):>20}")
    width = max(len(r["run"]) for r in runs)
    console.out(f"\n{'run':<{width}} {'train tokens':>15} {'steps':>9} {'GPU-hours':>10}")
    for p in plans:
        if all(r["tokens"] is None for r in p["runs"]):  # one line for a model whose data is not prepared yet
            console.out(f"{p['model'] + '/*':<{width}} {'?':>15} {'?':>9} {'?':>10}  ({len(p['runs'])} runs) "
                        f"{p['runs'][0]['why']}")
            continue
        for r in p["runs"]:
            if r["tokens"] is None:
                console.out(f"{r['run']:<{width}} {'?':>15} {'?':>9} {'?':>10}  {r['why']}")
            else:
                console.out(f"{r['run']:<{width}} {r['tokens']:>15,} {r['steps']:>9,} {_hours(r['gpu_hours']):>10}")
    known = [r for r in runs if r["gpu_hours"] is not None]
    total = sum(r["gpu_hours"] for r in known)
    console.out(f"\ntotal: {sum(r['tokens'] for r in known):,} training tokens, {_hours(total)} GPU-hours over "
                f"{len(known)} of {len(runs)} runs"
                + ("" if len(known) == len(runs) else " (the others: token counts unknown yet)"))
    console.out("model states = parameters + gradients + optimizer states (DeepSpeed's estimator); activations and "
                "buffers come on top")
