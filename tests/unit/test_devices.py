"""Device choices made before anything touches CUDA, with torch.cuda mocked where a GPU is needed: the rank's device,
the dtype, the attention kernel, the optimizer, loader workers, MFU peaks; and the step's device-side bookkeeping."""
import math

import pytest
import torch

from trainer import engine as eng
from trainer.dist import Dist, select_device
from trainer.config import ConfigError
from trainer.data import loader_workers
from trainer.dist import rank_cores
from trainer.meter import peak_tflops_for
from trainer.model import resolve_attn_impl
from trainer.step_stats import StepStats


@pytest.fixture
def gpus(monkeypatch):
    """A node with 8 mocked GPUs; records set_device calls."""
    made_current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(torch.cuda, "set_device", made_current.append)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    return made_current


def test_local_rank_1_maps_to_cuda_1(gpus):
    assert select_device(1) == torch.device("cuda", 1)
    assert gpus == [1]


def test_local_rank_beyond_visible_gpus_is_one_line(gpus, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with pytest.raises(ConfigError, match=r"LOCAL_RANK=8 but this node has 8 GPU\(s\) visible"):
        select_device(8)


def test_cpu_without_gpus():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert select_device(1) == torch.device("cpu")
    assert eng.resolve_dtype("auto") == "fp32"


def test_auto_dtype_and_attention_on_a_gpu(gpus, monkeypatch):
    import importlib.util

    assert eng.resolve_dtype("auto") == "bf16"
    assert eng.resolve_dtype("fp32") == "fp32"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object() if name == "flash_attn" else None)
    assert resolve_attn_impl("auto", "bf16") == "flash_attention_2"
    assert resolve_attn_impl("auto", "fp32") is None  # flash-attn has no fp32 kernels: the model's default (sdpa)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert resolve_attn_impl("auto", "bf16") is None
    assert resolve_attn_impl("eager", "bf16") == "eager"


def ds(offload=None, **params):
    zero = {"stage": 3, **({"offload_optimizer": {"device": offload}} if offload else {})}
    return {"optimizer": {"type": "AdamW", "params": {"lr": 1e-4, **params}}, "zero_optimization": zero}


def test_optimizer_choice(monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    monkeypatch.setattr(eng, "fused_adam_builds", lambda: (False, "nvcc: not found"))
    d = ds()
    assert "torch.optim.AdamW (DeepSpeed's FusedAdam op did not build here: nvcc: not found)" in eng.choose_optimizer(d, cpu)
    assert d["optimizer"]["params"]["torch_adam"] is True and "fused" not in d["optimizer"]["params"]
    monkeypatch.setattr(eng, "fused_adam_builds", lambda: (True, ""))
    d = ds()
    assert eng.choose_optimizer(d, gpu) == "optimizer: DeepSpeed FusedAdam (cuda)"
    assert "torch_adam" not in d["optimizer"]["params"]
    monkeypatch.setattr(eng, "fused_adam_builds", lambda: (False, "nvcc: not found"))
    d = ds()
    assert "AdamW(fused=True)" in eng.choose_optimizer(d, gpu)
    assert d["optimizer"]["params"] == {"lr": 1e-4, "torch_adam": True, "fused": True}
    d = ds(offload="cpu")
    assert "DeepSpeedCPUAdam" in eng.choose_optimizer(d, gpu) and "torch_adam" not in d["optimizer"]["params"]
    d = ds(torch_adam=False)
    assert "as the DeepSpeed JSON says" in eng.choose_optimizer(d, gpu)


def test_loader_workers():
    assert loader_workers(None, torch.device("cpu"), 2) == 0
    assert loader_workers(3, torch.device("cpu"), 2) == 3
    assert 1 <= loader_workers(None, torch.device("cuda", 0), 8) <= 4


SRUN = {"SLURM_STEP_NUM_TASKS": "16", "SLURM_PROCID": "3", "WORLD_SIZE": "16", "SLURM_CPUS_PER_TASK": "12"}


@pytest.mark.parametrize("cores, parent, env, expect", [
    (96, 96, {}, 12),  # deepspeed / torchrun on one node: every rank inherits the node's 96 cores, 8 ranks share them
    (96, 96, SRUN, 12),  # srun --cpus-per-task=12 without task binding: the step's 96 cores, shared
    (12, 12, SRUN, 12),  # srun --cpus-per-task=12 with task binding: this task's own 12 (was 12 // 8 = 1)
    (12, 96, {}, 12),  # deepspeed --bind_cores_to_rank / numactl: a slice smaller than the launcher's
    (12, 12, {**SRUN, "WORLD_SIZE": "128"}, 1),  # a deepspeed launcher started by srun: its ranks share the task's
    (3, 3, {}, 1),  # fewer cores than ranks: still one
])
def test_rank_cores_divides_only_an_affinity_the_local_ranks_share(cores, parent, env, expect):
    assert rank_cores(8, env, cores=cores, parent_cores=parent) == expect


def test_loader_workers_from_the_ranks_own_cores():
    gpu = torch.device("cuda", 0)
    assert loader_workers(None, gpu, 8, cores=rank_cores(8, SRUN, cores=12, parent_cores=12)) == 4
    assert loader_workers(None, gpu, 8, cores=rank_cores(8, {}, cores=16, parent_cores=16)) == 1
    assert loader_workers(None, gpu, 8, cores=3) == 2


def test_mfu_peak_matches_dtype():
    assert peak_tflops_for("NVIDIA H100 80GB HBM3", "bf16", tf32=False) == 989.4
    assert peak_tflops_for("NVIDIA H100 80GB HBM3", "fp32", tf32=False) == 66.9
    assert peak_tflops_for("NVIDIA H100 80GB HBM3", "fp32", tf32=True) == 494.7
    assert peak_tflops_for("NVIDIA H100 PCIe", "bf16", tf32=False) == 756.0
    assert peak_tflops_for("NVIDIA H200", "fp16", tf32=False) == 989.4
    assert peak_tflops_for("NVIDIA A100-SXM4-80GB", "bf16", tf32=False) == 312.0
    assert peak_tflops_for("NVIDIA L40S", "bf16", tf32=False) == 362.1
    assert peak_tflops_for("NVIDIA GeForce RTX 4090", "bf16", tf32=False) == 165.2
    assert peak_tflops_for("Some Future GPU", "bf16", tf32=False) is None  # then meter.peak_tflops says it


def test_step_stats_flags_bad_losses_on_the_device():
    stats = StepStats(Dist(), spike_factor=10.0)
    stats.begin(loss_ema=None)
    stats.add(torch.tensor(2.0))
    stats.add(torch.tensor(4.0))
    assert stats.agree(stop=False).item() == 1.0
    assert stats.result(2) == (3.0, 0, False)
    stats.begin(loss_ema=3.0)  # spike threshold 30
    stats.add(torch.tensor(31.0))
    stats.add(torch.tensor(float("nan")))
    assert math.isnan(stats.agree(stop=True).item())
    loss, bad, stop = stats.result(2)
    assert bad == 2 and stop and loss == 0.0
