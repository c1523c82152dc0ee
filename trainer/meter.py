"""Throughput and model FLOPs utilisation.

FLOPs per trained token = 6·N + 12·L·d·T (PaLM appendix B): 6N for the forward and backward matmuls over the N
non-embedding-lookup parameters, plus attention scores and values (L layers, model width d, sequence length T).
Activation recomputation is not counted (this is MFU, not HFU). MFU = achieved FLOP/s per device / the device's dense
peak FLOP/s for the run's dtype (fp32 matmuls count at the TF32 tensor-core peak when torch allows TF32).
"""
from __future__ import annotations

import time

import torch

# Dense (no sparsity) peak TFLOP/s from the vendors' datasheets, by device-name substring; the first match wins, so
# the more specific names come first. fp16 runs at the bf16 rate on all of these.
PEAK_TFLOPS = [
    ("H200", {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    ("H100 PCIe", {"bf16": 756.0, "tf32": 378.0, "fp32": 51.2}),
    ("H100 NVL", {"bf16": 835.5, "tf32": 417.8, "fp32": 60.0}),
    ("H100", {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9}),  # SXM
    ("A100", {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    ("L40S", {"bf16": 362.1, "tf32": 183.0, "fp32": 91.6}),
    ("RTX 6000 Ada", {"bf16": 364.2, "tf32": 182.1, "fp32": 91.1}),
    ("RTX A6000", {"bf16": 154.8, "tf32": 77.4, "fp32": 38.7}),
    ("RTX 4090", {"bf16": 165.2, "tf32": 82.6, "fp32": 82.6}),
    ("RTX 3090", {"bf16": 71.0, "tf32": 35.6, "fp32": 35.6}),
]


def peak_tflops_for(device_name: str, dtype: str, tf32: bool) -> float | None:
    """The peak a run in `dtype` can reach on this device, or None for a device not in the table."""
    for key, peaks in PEAK_TFLOPS:
        if key in device_name:
            if dtype in ("bf16", "fp16"):
                return peaks["bf16"]
            return peaks["tf32"] if tf32 else peaks["fp32"]
    return None


def detect_peak_tflops(dtype: str) -> float | None:
    if not torch.cuda.is_available():
        return None
    return peak_tflops_for(torch.cuda.get_device_name(), dtype, torch.backends.cuda.matmul.allow_tf32)


def flops_per_token(hf_config, n_params: int, seq_len: int) -> float:
    layers = getattr(hf_config, "num_hidden_layers", None) or getattr(hf_config, "n_layer", 0)
    width = getattr(hf_config, "hidden_size", None) or getattr(hf_config, "n_embd", 0)
    vocab = getattr(hf_config, "vocab_size", 0)
    # the input embedding is a lookup, not a matmul (a tied output head still counts, through the same weights)
    n = n_params - (0 if getattr(hf_config, "tie_word_embeddings", False) else vocab * width)
    return 6.0 * n + 12.0 * layers * width * seq_len


def mfu(tokens_per_s_per_device: float, flops_token: float, peak_tflops: float | None) -> float | None:
    if not peak_tflops:
        return None
    return tokens_per_s_per_device * flops_token / (peak_tflops * 1e12)


class Meter:
    """Tokens/s and MFU over the training steps since the last read; the loop restarts the clock after evals and
    saves, so they do not count as training time."""

    def __init__(self, tokens_per_step: int, world: int, flops_token: float, peak_tflops: float | None):
        self.tokens_per_step, self.world, self.flops_token, self.peak_tflops = (tokens_per_step, world, flops_token,
                                                                                peak_tflops)
        self.start_clock()

    def start_clock(self) -> None:
        self.t0, self.steps = time.perf_counter(), 0

    def read(self) -> tuple[float, float | None]:
        """(tokens/s over all ranks, MFU or None) since the clock started; restarts it."""
        tokens_per_s = self.steps * self.tokens_per_step / max(time.perf_counter() - self.t0, 1e-9)
        self.start_clock()
        return tokens_per_s, mfu(tokens_per_s / self.world, self.flops_token, self.peak_tflops)
