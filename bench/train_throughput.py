"""Training throughput: Odyssey against (b) HF `Trainer` with `deepspeed=` a ZeRO-3 JSON and (c) a bare
`deepspeed.initialize` forward / backward / step loop, on the same model, tokens, hyperparameters, micro-batch and
accumulation, in interleaved rounds (this machine is noisy). Each peer runs twice per round:
  at its own defaults (`bare`, `hf`: what a user of that tool gets; the targets are against these): the bare loop
    with a JSON holding only the batch, optimizer, clipping, dtype and `zero_optimization.stage` 3, everything else
    DeepSpeed's defaults; HF Trainer with the ZeRO-3 JSON of its DeepSpeed docs, "auto" values filled by HF;
  on Odyssey's resolved JSON (`bare_same`, `hf_same`): the same DeepSpeed settings, so the gap is the loop's own.
Warm-up steps are excluded; each contender's time is the wall clock over its timed steps, whole steps with their
logging:
  Odyssey: the MLflow timestamps of `train/loss` at the last warm-up step and the last step (log_interval 1);
  HF Trainer: a callback's clock at the same step ends (logging_steps 1);
  bare loop: its own clock at the same step ends (synchronized with the device at both ends).
Odyssey reads the prepared MDS shards; the peers read the same shards' rows as one in-memory token array.

    python bench/train_throughput.py [--rounds 3] [--steps 15] [--warmup 3] [--shape cpu] [--nproc 2]
(each contender runs under `deepspeed --num_gpus N`; on a machine without a GPU, on DeepSpeed's CPU accelerator).
Targets (CPU, against the peers' own defaults): Odyssey >= 0.95x the bare loop and >= 1.0x HF Trainer.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULT = "BENCH_RESULT "
# HF's DeepSpeed integration docs, "ZeRO-3 example": what an HF Trainer user passes as `deepspeed=`
HF_ZERO3 = {"bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"},
            "optimizer": {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto",
                                                      "weight_decay": "auto"}},
            "zero_optimization": {"stage": 3, "overlap_comm": True, "contiguous_gradients": True, "sub_group_size": 1e9,
                                  "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": "auto",
                                  "stage3_param_persistence_threshold": "auto", "stage3_max_live_parameters": 1e9,
                                  "stage3_max_reuse_distance": 1e9, "stage3_gather_16bit_weights_on_model_save": True},
            "gradient_accumulation_steps": "auto", "gradient_clipping": "auto", "steps_per_print": 2000,
            "train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto", "wall_clock_breakdown": False}


def peer_ds_config(role: str, odyssey: dict) -> dict:
    """The DeepSpeed config a peer runs with: Odyssey's resolved JSON (`*_same`), or the peer's own defaults with
    Odyssey's hyperparameters (the bare loop: only what DeepSpeed requires; HF Trainer: its docs' ZeRO-3 JSON)."""
    if role.endswith("_same"):
        return odyssey
    if role == "hf":
        return json.loads(json.dumps(HF_ZERO3))
    keys = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping")
    ds = {k: odyssey[k] for k in keys}
    opt = odyssey["optimizer"]["params"]
    ds["optimizer"] = {"type": "AdamW", "params": {k: opt[k] for k in ("lr", "betas", "eps", "weight_decay")}}
    ds["zero_optimization"] = {"stage": 3}
    if odyssey.get("bf16", {}).get("enabled"):
        ds["bf16"] = {"enabled": True}
    return ds


def odyssey_config(args, model: Path, domain: Path, out: Path, name: str, **sections) -> Path:
    """The benchmark run's config; `sections` replace or add keys per section (e.g. run={"max_steps": 5})."""
    import yaml

    cfg = {"model": {"path": str(model), "dtype": args.dtype},
           "data": {"streams": [{"name": "code", "path": str(domain)}], "micro_batch": args.micro_batch},
           "optim": {"lr": 1e-4, "accumulation": args.accumulation, "schedule": "constant"},
           "run": {"out_dir": str(out), "name": name, "max_steps": args.warmup + args.steps, "log_interval": 1},
           "eval": {"interval": 0, "max_samples": 2 * args.nproc, "token_stats": False},
           "checkpoint": {"save_final": False}, "tracking": {"experiment": "bench"}}
    if args.attn_impl:
        cfg["model"]["attn_impl"] = args.attn_impl
    if args.loader_workers is not None:
        cfg["data"]["num_workers"] = args.loader_workers
    for section, keys in sections.items():
        cfg.setdefault(section, {}).update(keys)
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def resolved_ds_config(cfg_path: Path, world: int, out: Path) -> Path:
    """The DeepSpeed JSON Odyssey resolves for this run; the peers get exactly this file."""
    import torch

    from trainer.config import load_config
    from trainer.engine import choose_optimizer, fill_ds_config

    cfg = load_config(cfg_path)
    ds = fill_ds_config(cfg, world)
    print(f"DeepSpeed JSON for all contenders: {choose_optimizer(ds, torch.device('cuda', 0) if _cuda() else torch.device('cpu'))}")
    path = out / "ds_config.json"
    path.write_text(json.dumps(ds, indent=1))
    return path


def run_odyssey(args, cfg_path: Path, *extra: str) -> str:
    """`odyssey train` with the benchmark's ranks; returns its output (raises with the tail when it fails)."""
    cmd = [sys.executable, "-m", "odyssey", "train", str(cfg_path), *extra]
    if args.nproc > 1:
        cmd += ["--nproc", str(args.nproc), "--master-port", str(args.port)]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if r.returncode != 0:
        raise SystemExit(f"odyssey run failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r.stdout


def logged_seconds(uri: str, first: int, last: int) -> float:
    """Wall clock between the steps `first` and `last`, from the MLflow timestamps of train/loss (taken as each step
    is logged, so whole steps and their logging count)."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("bench").experiment_id])[0]
    stamps = {m.step: m.timestamp for m in client.get_metric_history(run.info.run_id, "train/loss")}
    return (stamps[last] - stamps[first]) / 1000.0


def time_odyssey(args, cfg_path: Path, run_dir: Path) -> float:
    run_odyssey(args, cfg_path)
    return logged_seconds(f"sqlite:///{run_dir}/mlflow.db", args.warmup, args.warmup + args.steps)


def time_peer(args, role: str, model: Path, rows: Path, ds_json: Path) -> float:
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(args.nproc), "--master_port",
           str(args.port), __file__, "--role", role, "--model", str(model), "--rows", str(rows), "--ds-json",
           str(ds_json), "--warmup", str(args.warmup), "--steps", str(args.steps), "--dtype", args.dtype]
    if args.attn_impl:
        cmd += ["--attn-impl", args.attn_impl]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    line = [ln for ln in r.stdout.splitlines() if ln.startswith(RESULT)]
    if not line:  # a rank that dies in gloo's teardown after printing its timing still counts (seen here, rarely)
        raise SystemExit(f"{role} run failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return json.loads(line[-1][len(RESULT):])["seconds"]


def bare_worker(args) -> None:
    """What a user writes by hand: sharded init, deepspeed.initialize, forward / backward / step. As `bare_sync`,
    the same loop also reads each step's loss on the host (what any loop that logs a per-step loss does), which
    tells how much of a gap to `bare` one host sync per step costs."""
    import deepspeed
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.integrations import HfDeepSpeedConfig

    deepspeed.init_distributed()
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    ds = peer_ds_config(args.role.replace("bare_sync", "bare"), json.loads(Path(args.ds_json).read_text()))
    keep = HfDeepSpeedConfig(ds)  # noqa: F841  (ZeRO-3 sharded init in from_pretrained)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=_dtype(args.dtype),
                                                 **({"attn_implementation": args.attn_impl} if args.attn_impl else {}))
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds)
    rows = torch.from_numpy(np.load(args.rows))
    mb, acc = ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]
    i = rank * mb
    stamps = []
    for _ in range(args.warmup + args.steps):
        for _ in range(acc):
            x = rows[torch.arange(i, i + mb) % len(rows)].to(engine.device)
            i += mb * world
            loss = engine(input_ids=x, labels=x).loss
            engine.backward(loss)
            engine.step()
        if args.role == "bare_sync":
            loss.item()
        if len(stamps) in (args.warmup - 1, args.warmup + args.steps - 1):
            _sync()
        stamps.append(time.perf_counter())
    if rank == 0:
        print(RESULT + json.dumps({"seconds": stamps[-1] - stamps[args.warmup - 1]}), flush=True)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def hf_worker(args) -> None:
    """HF Trainer with `deepspeed=` the same JSON; TrainingArguments agree with it (HF checks that)."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    import deepspeed

    deepspeed.init_distributed()  # before TrainingArguments: on CPU, accelerate would otherwise see a world of one
    odyssey = json.loads(Path(args.ds_json).read_text())  # the hyperparameters; TrainingArguments must agree with it
    opt = odyssey["optimizer"]["params"]
    targs = TrainingArguments(
        output_dir=str(Path(args.rows).parent / "hf_out"),
        per_device_train_batch_size=odyssey["train_micro_batch_size_per_gpu"],
        gradient_accumulation_steps=odyssey["gradient_accumulation_steps"], max_steps=args.warmup + args.steps,
        learning_rate=opt["lr"], adam_beta1=opt["betas"][0], adam_beta2=opt["betas"][1], adam_epsilon=opt["eps"],
        weight_decay=opt["weight_decay"], max_grad_norm=odyssey["gradient_clipping"], lr_scheduler_type="constant",
        logging_steps=1, report_to=[], save_strategy="no", deepspeed=peer_ds_config(args.role, odyssey),
        bf16=args.dtype == "bf16",
        dataloader_num_workers=0, disable_tqdm=True, seed=0, use_cpu=not _cuda())
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=_dtype(args.dtype),
                                                 **({"attn_implementation": args.attn_impl} if args.attn_impl else {}))
    rows = torch.from_numpy(np.load(args.rows))
    data = [{"input_ids": r, "labels": r} for r in rows]
    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            if state.global_step in (args.warmup, args.warmup + args.steps):
                _sync()
            stamps.append(time.perf_counter())

    Trainer(model=model, args=targs, train_dataset=data, callbacks=[Clock()]).train()
    if int(os.environ.get("RANK", "0")) == 0:
        print(RESULT + json.dumps({"seconds": stamps[-1] - stamps[args.warmup - 1]}), flush=True)


def _dtype(name: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16}[name]


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def report(args, times: dict[str, list[float]], tokens_per_step: int) -> None:
    names = list(times)
    tps = {n: [args.steps * tokens_per_step / t for t in ts] for n, ts in times.items()}
    peers = [n for n in names if n != "odyssey"] if "odyssey" in names else []
    print(f"\n{args.shape} Llama, seq {args.seq_len}, micro-batch {args.micro_batch}, accumulation {args.accumulation},"
          f" {args.nproc} rank(s) ZeRO-3 {args.dtype}; {args.steps} timed steps after {args.warmup} warm-up; tokens/s")
    print("| round | " + " | ".join(names + [f"odyssey/{p}" for p in peers]) + " |")
    print("|---" * (1 + len(names) + len(peers)) + "|")
    for r in range(args.rounds):
        cells = [f"{tps[n][r]:,.0f}" for n in names] + [f"{tps['odyssey'][r] / tps[p][r]:.3f}" for p in peers]
        print(f"| {r + 1} | " + " | ".join(cells) + " |")
    med = {n: statistics.median(v) for n, v in tps.items()}
    cells = [f"{med[n]:,.0f}" for n in names] + [f"**{med['odyssey'] / med[p]:.3f}**" for p in peers]
    print("| median | " + " | ".join(cells) + " |")
    paired = [statistics.median(o / b for o, b in zip(tps["odyssey"], tps[p])) for p in peers]
    print("| median of the rounds' ratios | " + " | ".join("" for _ in names) + " | "
          + " | ".join(f"{r:.3f}" for r in paired) + " |")
    print("targets (peers at their own defaults): odyssey/bare >= 0.95, odyssey/hf >= 1.0; *_same: the peers on "
          "Odyssey's resolved DeepSpeed JSON")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--shape", default="cpu", help="cpu (16.9M) or tinyllama (1.1B)")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--micro-batch", type=int, default=2)
    ap.add_argument("--accumulation", type=int, default=1)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--attn-impl", default=None)
    ap.add_argument("--contenders", default="odyssey,bare,hf,bare_same,hf_same")
    ap.add_argument("--loader-workers", type=int, help="Odyssey's data.num_workers (default: its own choice)")
    ap.add_argument("--workdir", help="keep the model and shards here (default: a temp folder)")
    ap.add_argument("--port", type=int, default=29731)
    # worker side (started by the deepspeed launcher)
    ap.add_argument("--role", choices=["bare", "bare_sync", "hf", "bare_same", "hf_same"])
    ap.add_argument("--model")
    ap.add_argument("--rows")
    ap.add_argument("--ds-json")
    ap.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role:
        (hf_worker if args.role.startswith("hf") else bare_worker)(args)
        return 0
    if not _cuda():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    with tempfile.TemporaryDirectory(prefix="odyssey-trainbench-") as tmp:
        work = Path(args.workdir) if args.workdir else Path(tmp)
        return run_rounds(args, work)


def run_rounds(args, work: Path) -> int:
    import numpy as np

    from bench.workload import SHAPES, build, token_rows

    work.mkdir(parents=True, exist_ok=True)
    model, domain = build(work / args.shape, SHAPES[args.shape], args.seq_len)
    rows = work / "rows.npy"
    np.save(rows, token_rows(domain))
    runs = work / "runs"
    runs.mkdir(exist_ok=True)
    ds_json = resolved_ds_config(odyssey_config(args, model, domain, runs, "probe"), args.nproc, work)
    contenders = args.contenders.split(",")
    times: dict[str, list[float]] = {c: [] for c in contenders}
    for r in range(args.rounds):
        for c in contenders:
            if c == "odyssey":
                name = f"odyssey_{r}_{time.time_ns()}"
                times[c].append(time_odyssey(args, odyssey_config(args, model, domain, runs, name), runs / name))
            else:
                times[c].append(time_peer(args, c, model, rows, ds_json))
            print(f"round {r + 1} {c}: {times[c][-1]:.2f} s for {args.steps} steps", flush=True)
    report(args, times, args.micro_batch * args.seq_len * args.accumulation * args.nproc)
    return 0


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
