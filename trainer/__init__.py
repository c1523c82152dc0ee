"""Training: one process per device, a HF model under DeepSpeed ZeRO-3, the loop (train.py) and its components."""
