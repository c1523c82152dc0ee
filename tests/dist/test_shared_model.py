"""`trainer/checkpoint_eval.shared_model` across 2 real ranks (gloo on CPU, no DeepSpeed): rank 0 alone builds the
model, the other rank ends up with the same tensors (tied weights stay tied, bf16, non-persistent buffers), and a
failure on either rank stops both at once, rank 1 with one line: neither waits in a collective."""
import json
import os
import time

import pytest
import torch

from tests.dist.helpers import free_port

pytestmark = pytest.mark.slow


def _rank(rank: int, port: int, model_dir: str, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2, init_method=f"tcp://127.0.0.1:{port}")
    from transformers import AutoModelForCausalLM

    from trainer.checkpoint_eval import shared_model
    from trainer.config import ModelCfg
    from trainer.dist import Dist

    dist = Dist(rank, 2, rank, torch.device("cpu"))

    def load():
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)

    def broken():
        raise OSError(2, "No such file or directory", "step_9/mp_rank_00_model_states.pt")

    out = {}
    bf16, fp32 = ModelCfg(path=model_dir, dtype="bf16"), ModelCfg(path=model_dir, dtype="fp32")
    model, ref = shared_model(load, model_dir, bf16, dist, "step_1"), load().to(torch.bfloat16)
    ids = torch.tensor([[1, 5, 7, 9, 11]])
    out["same"] = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values())) \
        and all(torch.equal(a, b) for (_, a), (_, b) in zip(model.named_buffers(), ref.named_buffers())) \
        and torch.equal(model(ids).logits, ref(ids).logits)
    out["tied"] = model.lm_head.weight is model.model.embed_tokens.weight
    out["head"] = type(model.lm_head).__name__  # the run's loss (model.loss_impl auto: chunked) on every rank
    for case, build, config in (("rank0_fails", broken if rank == 0 else load, model_dir),
                                ("skeleton_fails", load, model_dir if rank == 0 else f"{out_dir}/nowhere")):
        try:
            shared_model(build, config, fp32, dist, "step_9")
            out[case] = "no error"
        except Exception as err:
            out[case] = f"{type(err).__name__}: {err}"
    torch.distributed.barrier()  # both still in step: nobody left early or waits in a broadcast
    with open(f"{out_dir}/rank{rank}.json", "w") as f:
        json.dump(out, f)
    torch.distributed.destroy_process_group()


def test_rank0_builds_and_sends_and_failures_stop_both(tmp_path):
    import torch.multiprocessing as mp
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
                     ).save_pretrained(tmp_path / "model")
    ctx = mp.start_processes(_rank, args=(free_port(), str(tmp_path / "model"), str(tmp_path)), nprocs=2,
                             join=False, start_method="spawn")
    deadline = time.time() + 240
    while not ctx.join(timeout=5):
        if time.time() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("a rank hung")
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["same"] and r1["same"] and r0["tied"] and r1["tied"]
    assert r0["head"] == r1["head"] == "LossHead"
    assert r0["rank0_fails"].startswith("FileNotFoundError: [Errno 2] No such file")  # its own error, as it was
    assert r1["rank0_fails"] == "CheckpointError: step_9: rank 0 could not build the model (its error is in its output)"
    assert r0["skeleton_fails"] == r1["skeleton_fails"]  # the same line on both
    assert r0["skeleton_fails"].startswith("CheckpointError: step_9: rank 1 could not build the model (")
