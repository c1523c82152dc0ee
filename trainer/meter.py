"""Throughput and model FLOPs utilisation.

FLOPs per trained token = 6·N + 12·L·d·T (PaLM appendix B): 6N for the forward and backward matmuls over the N
non-embedding-lookup parameters, plus attention scores and values (L layers, model width d, sequence length T).
Activation recomputation is not counted (this is MFU, not HFU). MFU = achieved FLOP/s per device / peak FLOP/s.
"""
from __future__ import annotations

import torch

# Dense bf16 peaks (TFLOP/s) by device-name substring.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}


def detect_peak_tflops() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for key, tflops in PEAK_BF16_TFLOPS.items():
        if key in name:
            return tflops * (0.76 if key == "H100" and "PCIe" in name else 1.0)  # H100 PCIe: 756
    return None


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
