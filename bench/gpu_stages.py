"""The stages of the GPU device check. bench/gpu_check.py runs each as its own process under its own time limit, with
the settings it wrote to WORK/check.json; a stage prints `ROW {json}` lines as its results come in (gpu_check.py merges
them into the stage's row), so a stage killed half-way still reports what it measured. By hand, after a check:

    python bench/gpu_stages.py speed --work /tmp/odyssey-gpu-work
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.train_throughput import logged_seconds, odyssey_config, resolved_ds_config, time_peer  # noqa: E402

ROW = "ROW "
SEVEN_B = "llama2-7b"  # the shape in bench/workload.py's SHAPES
SEVEN_B_RUN = {"seq_len": 2048, "micro_batch": 4, "accumulation": 1, "warmup": 2, "steps": 10, "dtype": "bf16"}


def variants(args) -> dict[str, dict]:
    """The Odyssey config variants the "variants" stage runs once each, in this order: name → dotted overrides of
    the speed stage's config. A key Odyssey does not have (yet) fails its variant with the config error in the row."""
    from bench.workload import SHAPES

    twice, hidden = 2 * args.micro_batch, SHAPES[args.shape].hidden
    return {
        "baseline": {},
        "mb2": {"data.micro_batch": twice},
        "ckpt-mb2": {"model.activation_checkpointing": True, "data.micro_batch": twice},
        "ckpt-mb4": {"model.activation_checkpointing": True, "data.micro_batch": 2 * twice},
        "zero2": {"deepspeed.config": "zero2"},
        "loss-plain": {"model.loss_impl": "plain"},  # the model's own loss, full logits (the default is chunked)
        "compile": {"model.compile": True},
        "stage-auto": {"deepspeed.stage": "auto"},
        # the ZeRO-3 bucket sizes HF Trainer derives from the hidden size, against DeepSpeed's defaults (Odyssey's)
        "hf-buckets": {"deepspeed.overrides": {"zero_optimization.reduce_bucket_size": hidden * hidden,
                                               "zero_optimization.stage3_prefetch_bucket_size": int(0.9 * hidden**2),
                                               "zero_optimization.stage3_param_persistence_threshold": 10 * hidden}},
    }


def report(**metrics) -> None:
    """One partial row; gpu_check.py merges a stage's ROW lines in order, so later values replace earlier ones."""
    print(ROW + json.dumps(metrics), flush=True)


def settings(work: Path) -> SimpleNamespace:
    """gpu_check.py's settings, plus what every run of the benchmark helpers expects (one rank, the device's dtype)."""
    from trainer.model import resolve_dtype

    args = SimpleNamespace(**json.loads((work / "check.json").read_text()))
    args.work, args.runs = Path(args.work), Path(args.work) / "runs"
    args.runs.mkdir(parents=True, exist_ok=True)
    args.nproc, args.attn_impl, args.loader_workers, args.dtype = 1, None, None, resolve_dtype("auto")
    return args


def workload(args) -> tuple[Path, Path]:
    """(model folder, prepared domain) of the check's shape, built once in the work folder (later calls reuse it)."""
    from bench.workload import SHAPES, build

    return build(args.work / f"{args.shape}-seq{args.seq_len}", SHAPES[args.shape], args.seq_len, text_mb=args.text_mb)


def token_rows_file(args, domain: Path) -> Path:
    """The domain's train rows as one .npy: what the bare loop reads."""
    import numpy as np

    from bench.workload import token_rows

    path = args.work / f"{domain.parent.parent.name}-rows.npy"
    if not path.is_file():
        np.save(path, token_rows(domain))
    return path


def model_flops(model: Path, seq_len: int) -> tuple[int, float]:
    """(parameters, training FLOPs per token), counted on the meta device."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from trainer.meter import flops_per_token

    config = AutoConfig.from_pretrained(model)
    with torch.device("meta"):
        n = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    return n, flops_per_token(config, n, seq_len)


def mfu(tokens_per_s: float, flops_token: float, peak: float | None) -> float | None:
    return round(tokens_per_s * flops_token / (peak * 1e12), 4) if peak else None


def rate(tokens_per_s: float, flops_token: float, peak: float | None) -> str:
    util = f", MFU {mfu(tokens_per_s, flops_token, peak):.1%}" if peak else ""
    return f"{tokens_per_s:,.0f} tok/s ({tokens_per_s * flops_token / 1e12:.2f} TFLOP/s{util})"


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "(no output)"


def streamed(cmd: list[str]) -> tuple[int, str]:
    """(exit code, output) of `cmd`, its output copied into this stage's log line by line as it comes, so a stage
    killed at its limit still shows how far it got."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        sys.stdout.write(line)
        lines.append(line)
    return proc.wait(), "".join(lines)


def run_odyssey(args, cfg: Path, *extra: str) -> str:
    """bench/train_throughput.py's run_odyssey (one rank), streamed: its output (raises with the tail when it fails)."""
    code, out = streamed([sys.executable, "-m", "odyssey", "train", str(cfg), *extra])
    if code != 0:
        raise SystemExit(f"odyssey run failed:\n{out[-3000:]}")
    return out


def fresh_run(args, model: Path, domain: Path, name: str, **sections) -> tuple[Path, str]:
    """An Odyssey run config under a clean run folder with its own MLflow file store: (config, tracking URI)."""
    shutil.rmtree(args.runs / name, ignore_errors=True)
    uri = f"file://{args.runs / name}/mlruns"
    sections["tracking"] = {"experiment": "bench", "uri": uri, **sections.get("tracking", {})}
    return odyssey_config(args, model, domain, args.runs, name, **sections), uri


def timed_odyssey(args, model: Path, domain: Path, name: str, overrides: dict | None = None) -> tuple[float, str]:
    """(tokens/s over the timed steps, the run's log) of one Odyssey run; `overrides` are dotted config keys."""
    cfg, uri = fresh_run(args, model, domain, name)
    log = run_odyssey(args, cfg, *(f"{k}={json.dumps(v)}" for k, v in (overrides or {}).items()))
    micro_batch = (overrides or {}).get("data.micro_batch", args.micro_batch)
    tokens = args.steps * micro_batch * args.accumulation * args.seq_len
    return tokens / logged_seconds(uri, args.warmup, args.warmup + args.steps), log


# ------------------------------------------------------------------------------------------------------------ stages


def stage_build(args) -> int:
    """The model built from config and the domain prepped; the row also says the device and the stack."""
    import deepspeed
    import torch
    import transformers

    t0 = time.time()
    model, domain = workload(args)
    token_rows_file(args, domain)
    n_params, flops_token = model_flops(model, args.seq_len)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    stack = f"torch {torch.__version__}, transformers {transformers.__version__}, deepspeed {deepspeed.__version__}"
    report(device=device, stack=stack, params=n_params, flops_per_token=flops_token,
           summary=f"{device}; {stack}; {n_params / 1e9:.3f}B-param Llama, seq {args.seq_len}, micro-batch "
                   f"{args.micro_batch}, {args.dtype}; built + prepped in {time.time() - t0:.0f} s")
    return 0


def build_op(op: str) -> str:
    """JIT-build one DeepSpeed op in a child process; what came of it: built (ninja compiled), cached (it loaded
    what an earlier build left), or failed with the first compiler error line (else the output's last line)."""
    code = (f"from trainer.engine import use_cuda_headers\nuse_cuda_headers()\n"  # as the trainer builds them
            f"from deepspeed.accelerator import get_accelerator\n"
            f"get_accelerator().create_op_builder({op!r}).load(verbose=True)")
    t0 = time.time()
    exit_code, out = streamed([sys.executable, "-c", code])
    if exit_code == 0:
        compiled = re.search(r"^\[\d+/\d+\] ", out, re.M)  # ninja's build steps
        return f"{'built' if compiled else 'cached, loaded'} in {time.time() - t0:.0f} s"
    errors = [ln.strip() for ln in out.splitlines() if re.search(r"error:|fatal error", ln, re.I)]
    return f"failed: {(errors[0] if errors else last_line(out))[:300]}"


def stage_ops(args) -> int:
    """DeepSpeed's FusedAdam and CPUAdam (and on the CPU accelerator its shared-memory comm op) built once, into
    TORCH_EXTENSIONS_DIR (gpu_check.py sets it for every stage), so no later process builds them."""
    import torch

    results = {"extensions_dir": os.environ.get("TORCH_EXTENSIONS_DIR")}
    ops = ["FusedAdamBuilder", "CPUAdamBuilder"] + ([] if torch.cuda.is_available() else ["ShareMemCommBuilder"])
    for op in ops:
        results[op.removesuffix("Builder")] = build_op(op)
        report(**results, summary="; ".join(f"{k} {v}" for k, v in results.items() if k != "extensions_dir"))
    failed = [op.removesuffix("Builder") for op in ops if results[op.removesuffix("Builder")].startswith("failed")]
    if failed:
        report(error=f"did not build: {', '.join(failed)}")
    return 1 if failed else 0


def stage_speed(args) -> int:
    """Odyssey against the bare `deepspeed.initialize` loop, interleaved rounds, on the same model, data and
    resolved DeepSpeed JSON."""
    from trainer.meter import detect_peak_tflops

    model, domain = workload(args)
    flops_token, peak = model_flops(model, args.seq_len)[1], detect_peak_tflops(args.dtype)
    ds_json = resolved_ds_config(fresh_run(args, model, domain, "speed_probe")[0], 1, args.work)
    rows, tokens = token_rows_file(args, domain), args.steps * args.micro_batch * args.accumulation * args.seq_len
    tps: dict[str, list[float]] = {"odyssey": [], "bare": []}
    for r in range(args.rounds):
        odyssey, log = timed_odyssey(args, model, domain, f"speed_{r}")
        tps["odyssey"].append(round(odyssey, 1))
        tps["bare"].append(round(tokens / time_peer(args, "bare_same", model, rows, ds_json), 1))
        med = {k: statistics.median(v) for k, v in tps.items()}
        rounds = ", ".join(f"{o:,.0f}/{b:,.0f}" for o, b in zip(tps["odyssey"], tps["bare"]))
        report(rounds_tok_s=tps, median_tok_s=med, ratio=round(med["odyssey"] / med["bare"], 4),
               tflops={k: round(v * flops_token / 1e12, 2) for k, v in med.items()},
               mfu={k: mfu(v, flops_token, peak) for k, v in med.items()},
               setup=" ".join(re.findall(r"\[odyssey\] device (.*)", log)[-1:]),
               summary=f"Odyssey {rate(med['odyssey'], flops_token, peak)} / bare "
                       f"{rate(med['bare'], flops_token, peak)} = {med['odyssey'] / med['bare']:.3f}, medians of "
                       f"{r + 1} round(s) of {args.steps} steps after {args.warmup} (tok/s Odyssey/bare by round: "
                       f"{rounds})")
    return 0


def stage_variants(args) -> int:
    """Each config variant once, as tokens/s and MFU; a variant that fails says why and the next one runs."""
    from trainer.meter import detect_peak_tflops

    model, domain = workload(args)
    flops_token, peak = model_flops(model, args.seq_len)[1], detect_peak_tflops(args.dtype)
    chosen = variants(args) if args.variants == "all" else {k: variants(args)[k] for k in args.variants.split(",")}
    results, failed = {}, []
    for name, overrides in chosen.items():
        try:
            tps, _ = timed_odyssey(args, model, domain, f"variant_{name}", overrides)
            results[name] = {"tok_s": round(tps, 1), "mfu": mfu(tps, flops_token, peak),
                             "text": rate(tps, flops_token, peak)}
        except SystemExit as e:  # run_odyssey's failure: the run's output tail
            failed.append(name)
            results[name] = {"error": last_line(str(e)), "text": f"failed: {last_line(str(e))}"}
        report(variants=results, summary="; ".join(f"{k}: {v['text']}" for k, v in results.items()))
    if failed:
        report(error=f"failed: {', '.join(failed)}")
    return 1 if failed else 0


def seconds_in(log: str, pattern: str) -> float | None:
    found = re.findall(pattern, log)
    return float(found[-1]) if found else None


def stage_functional(args) -> int:
    """Eval with token statistics and a checkpoint at step 2, a resume to step 4, an export to a bf16 HF folder loaded
    back with from_pretrained."""
    model, domain = workload(args)
    cfg, _ = fresh_run(args, model, domain, "functional", run={"max_steps": 4, "halt_at_step": 2},
                       eval={"interval": 2, "max_samples": 32, "token_stats": True}, checkpoint={"save_final": True})
    log = run_odyssey(args, cfg)
    found = {"eval_s": seconds_in(log, r"eval @ step 2 \(([\d.]+)s\)"),
             "checkpoint_s": seconds_in(log, r"checkpoint \S+ \(([\d.]+)s\)")}
    report(**found, summary=f"eval + token stats {found['eval_s']} s, checkpoint save {found['checkpoint_s']} s")
    log = run_odyssey(args, cfg, "--resume", "auto", "run.halt_at_step=null")
    found["resumed"] = "done: 4 steps" in log
    found["resume_load_s"] = seconds_in(log, r"loaded in ([\d.]+)s")
    t0 = time.time()
    export = args.work / "functional_export"
    subprocess.run([sys.executable, "-m", "odyssey", "export", str(args.runs / "functional"), str(export), "--dtype",
                    "bf16", "--overwrite"], check=True)
    loss = one_sample_loss(export, token_rows_file(args, domain))
    found["export_s"], found["export_loss"] = round(time.time() - t0, 1), round(loss, 4)
    shutil.rmtree(args.runs / "functional" / "checkpoints")  # ~17 GB at 1.1B: the node's disk is 64 GiB
    report(**found, summary=f"eval + token stats {found['eval_s']} s, checkpoint save {found['checkpoint_s']} s, "
                            f"resume {'reached step 4' if found['resumed'] else 'DID NOT FINISH'} (load "
                            f"{found['resume_load_s']} s), bf16 export + from_pretrained {found['export_s']:.0f} s, "
                            f"loss of one sample {found['export_loss']:.3f}")
    if not found["resumed"]:
        report(error="the resumed run did not reach step 4")
    return 0 if found["resumed"] else 1


def one_sample_loss(folder: Path, rows: Path) -> float:
    """An HF folder loaded back with from_pretrained; its loss on the first training row."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(folder, dtype="auto").to(device)
    x = torch.from_numpy(np.load(rows, mmap_mode="r")[:1].copy()).to(model.device)
    with torch.no_grad():
        return model(input_ids=x, labels=x).loss.item()


def stage_offload(args) -> int:
    model, domain = workload(args)
    cfg, _ = fresh_run(args, model, domain, "offload", run={"max_steps": 3}, deepspeed={"config": "zero3_offload"})
    log = run_odyssey(args, cfg)
    found = re.findall(r"step 3/3 loss \S+ lr \S+ ([\d,]+) tok/s", log)
    report(tok_s_step3=found[-1] if found else None, **({} if found else {"error": "no step 3 line in its log"}),
           summary=f"zero3_offload, 3 steps: {found[-1] if found else '?'} tok/s at step 3")
    return 0 if found else 1


def build_7b(args, tokenizer_from: Path, device: str = "cuda") -> tuple[Path, float]:
    """The Llama-2-7B shape built from config in bf16 on the device (a CPU fp32 init and a 27 GB write would take
    minutes) next to a verbatim copy of the benchmark's tokenizer: (folder, seconds save_pretrained took)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from bench.workload import SHAPES

    folder, shape = args.work / SEVEN_B / "model", SHAPES[SEVEN_B]
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for f in tokenizer_from.iterdir():
        if f.is_file() and not f.name.startswith(("config", "generation_config", "model")):
            shutil.copy(f, folder / f.name)
    config = AutoConfig.for_model("llama", vocab_size=max(shape.vocab, len(AutoTokenizer.from_pretrained(folder))),
                                  hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                                  num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                                  num_key_value_heads=shape.kv_heads, max_position_embeddings=4096,
                                  tie_word_embeddings=False)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    t0 = time.time()
    model.save_pretrained(folder)
    del model
    torch.cuda.empty_cache()
    return folder, time.time() - t0


def stage_7b(args) -> int:
    """Llama-2-7B's shape trains under ZeRO-3 (offloaded below 100 GiB of device memory), bf16, seq 2048, activation
    checkpointing, without a checkpoint: a 7B one with its optimizer states (~95 GB) does not fit the node's 64 GiB
    disk, and `odyssey export` reads only checkpoints, so the trained weights cannot be exported. What is exported and
    loaded back is the bf16 model built from config, written with save_pretrained (the run's own input)."""
    import torch

    from trainer.meter import detect_peak_tflops

    run = SimpleNamespace(**{**vars(args), **SEVEN_B_RUN})
    memory_gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    ds = "zero3_offload" if memory_gib < 100 else "zero3"
    base_model, domain = workload(run)
    model, save_s = build_7b(run, base_model)
    n_params, flops_token = model_flops(model, run.seq_len)
    setup = (f"{n_params / 1e9:.2f}B Llama-2-7B shape, {ds} ({memory_gib:.0f} GiB device), {run.dtype}, seq "
             f"{run.seq_len}, micro-batch {run.micro_batch}, activation checkpointing")
    report(params=n_params, deepspeed=ds, save_s=round(save_s, 1), summary=f"{setup}: built, training")
    cfg, uri = fresh_run(run, model, domain, "7b", deepspeed={"config": ds})
    run_odyssey(run, cfg, "model.activation_checkpointing=true")  # (odyssey_config takes no model= section)
    tps = run.steps * run.micro_batch * run.seq_len / logged_seconds(uri, run.warmup, run.warmup + run.steps)
    peak = detect_peak_tflops("bf16")
    trained = f"{setup}, {run.steps} steps after {run.warmup}: {rate(tps, flops_token, peak)}"
    report(tok_s=round(tps, 1), mfu=mfu(tps, flops_token, peak), summary=trained)
    t0 = time.time()
    loss = one_sample_loss(model, token_rows_file(run, domain))
    report(export_load_s=round(time.time() - t0, 1), export_loss=round(loss, 4),
           summary=f"{trained}; exported: the untrained bf16 model built from config (save_pretrained {save_s:.0f} s; "
                   f"no checkpoint to export the trained weights from), loaded back with from_pretrained in "
                   f"{time.time() - t0:.0f} s, loss of one sample {loss:.3f}")
    return 0


@dataclass
class Stage:
    run: Callable[[SimpleNamespace], int]
    limit_s: int  # its own time limit: what it takes on one H100 at the default (tinyllama) settings, with room
    needs_gpu: bool = False


# in the order gpu_check.py runs them: the most valuable first
STAGES = {"build": Stage(stage_build, 150), "ops": Stage(stage_ops, 240), "speed": Stage(stage_speed, 300),
          "variants": Stage(stage_variants, 360), "functional": Stage(stage_functional, 180),
          "offload": Stage(stage_offload, 120), "7b": Stage(stage_7b, 480, needs_gpu=True)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage", choices=STAGES)
    ap.add_argument("--work", default="/tmp/odyssey-gpu-work", help="the check's work folder (holds check.json)")
    a = ap.parse_args()
    print(f"gpu_stages: {a.stage}, settings from {a.work}/check.json", flush=True)  # the log is never empty
    try:
        return STAGES[a.stage].run(settings(Path(a.work)))
    except (Exception, SystemExit) as e:  # the helpers' SystemExit carries a failed run's output tail
        traceback.print_exc()
        report(error=last_line(str(e)) if isinstance(e, SystemExit) else f"{type(e).__name__}: {last_line(str(e))}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
