"""Task scoring (trainer/task_eval.py, analysis/task_scores.py) on a tiny Llama: a label word's score is its tokens'
summed log-likelihood after the prompt, checked against one unpadded forward per (prompt, label) also for labels of
several tokens; batched, left-padded scoring agrees with it; k-shot prompts carry the pool's first k examples; greedy
generations are cut at the first blank line; Rouge-L is rouge-score's; the generalization findings read the matrix."""
import json

import pytest
import torch
import torch.nn.functional as F

from analysis.task_scores import CROSS, IN, OUT, cell_kind, cut_generation, generalization, rouge_l
from data_prep.config import validate
from data_prep.tasks import TaskCfg, prepare_task
from tests import tiny
from trainer.dist import Dist
from trainer.task_eval import (TaskSet, example_scores, greedy, label_logprobs, open_task_set, score_task,
                               synced_generation)

LABELS = {"0": " riverbank", "1": " mountain ridge", "2": " the"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("scoring")
    tok_dir = tiny.build_tokenizer(root / "model", tiny.prose_docs(80), vocab_size=400)
    tiny.build_tiny_llama(root / "model", len(AutoTokenizer.from_pretrained(tok_dir)))
    docs = tiny.prose_docs(40, seed=5)
    src = root / "src"
    src.mkdir()
    for split, part in (("train", docs[:20]), ("test", docs[20:])):
        (src / f"{split}.jsonl").write_text("".join(json.dumps({"input": d, "label": str(i % 3)}) + "\n"
                                                    for i, d in enumerate(part)))
    cfg = validate(TaskCfg, {"name": "cls", "source": str(src), "kind": "classification", "label_words": LABELS,
                             "template": "Text: {input}\nPlace:", "max_len": 96}, "task")
    prepare_task(cfg, root / "tasks", str(root / "model"))
    tok = AutoTokenizer.from_pretrained(root / "model")
    model = AutoModelForCausalLM.from_pretrained(root / "model", dtype=torch.float32).eval()
    return {"tok": tok, "model": model, "task": open_task_set("cls", root / "tasks" / "cls", "test", tok)}


def reference_logprob(model, prompt: list[int], option: list[int]) -> float:
    ids = torch.tensor([prompt + option])
    with torch.no_grad():
        logp = F.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
    return sum(logp[len(prompt) - 1 + j, t].item() for j, t in enumerate(option))


def test_label_words_score_by_summed_log_likelihood_even_when_several_tokens(setup):
    tok, model, ts = setup["tok"], setup["model"], setup["task"]
    examples = [ts.example(i) for i in range(3)]
    pairs = [ts.encoder.option_ids(ex, [], ts.label_words) for ex in examples]
    options = [o for _, o in pairs[0]]
    assert max(len(o) for o in options) > 1 and min(len(o) for o in options) == 1  # multi- and single-token labels
    assert len({len(row[0][0]) for row in pairs}) > 1  # different lengths: the batch is really padded
    with torch.no_grad():
        batched = label_logprobs(model, [p for row in pairs for p in row], len(options), tok.eos_token_id,
                                 torch.device("cpu"))
    for i, row in enumerate(pairs):
        for j, (p, o) in enumerate(row):
            assert batched[i, j].item() == pytest.approx(reference_logprob(model, p, o), abs=1e-4)
    with torch.no_grad():
        correct = example_scores(model, ts, examples, 0, 60, torch.device("cpu"), False)
    expected = [float(ts.label_words[int(batched[i].argmax())] == ex.target) for i, ex in enumerate(examples)]
    assert correct.tolist() == expected


def test_k_shot_prompts_carry_the_pools_first_examples(setup):
    ts, tok = setup["task"], setup["tok"]
    demos = ts.demos(2)
    text = tok.decode(ts.encoder.prompt_ids(ts.example(0), demos, 10_000), skip_special_tokens=True)
    first = text.index(demos[0].fields["input"])
    assert first < text.index(demos[1].fields["input"]) < text.index(ts.example(0).fields["input"])
    assert f"Place:{demos[0].target}\n\nText:" in text
    with pytest.raises(ValueError, match="21-shot needs 21 demonstrations, its pool has 20"):
        ts.demos(21)


def test_score_task_single_rank_counts_every_example(setup):
    acc, n = score_task(setup["model"], setup["task"], 0, 7, 3, Dist())
    assert n == 7 and 0.0 <= acc <= 1.0 and (acc * 7) == pytest.approx(round(acc * 7))


def test_generation_syncs_ranks_under_zero3_only(setup):
    """generate(synced_gpus=True) only where forwards gather partitioned parameters collectively: ZeRO-3, whose
    parameters carry DeepSpeed's ds_id (trainer/engine.py checks the same); not for zero2 or plain data parallel."""
    model, two_ranks = setup["model"], Dist(rank=1, world=2)
    assert not synced_generation(model, two_ranks)
    first = next(model.parameters())
    first.ds_id = 0
    try:
        assert synced_generation(model, two_ranks)
        assert synced_generation(type("Engine", (), {"module": model})(), two_ranks)  # a DeepSpeed engine's module
        assert not synced_generation(model, Dist())  # alone: nothing to wait for
    finally:
        del first.ds_id


def manual_greedy(model, prompt: list[int], n: int, eos: int) -> list[int]:
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
            ids.append(nxt)
            if nxt == eos:
                break
    return ids[len(prompt):]


def test_batched_left_padded_greedy_is_the_unpadded_greedy_cut_at_the_first_blank_line(setup):
    tok, model, cls = setup["tok"], setup["model"], setup["task"]
    gen = TaskSet("gen", "gen", "generation", cls.encoder, cls.rows, None, cls.pool)
    examples = [gen.example(i) for i in range(3)]
    prompts = [gen.encoder.prompt_ids(ex, [], 60) for ex in examples]
    texts = greedy(model, prompts, 12, tok, torch.device("cpu"), False)
    for p, text in zip(prompts, texts):
        expected = tok.decode(manual_greedy(model, p, 12, tok.eos_token_id), skip_special_tokens=True)
        assert text == cut_generation(expected)
    assert any(texts)  # the tiny model does say something
    scores = example_scores(model, gen, examples, 0, 12, torch.device("cpu"), False)
    assert scores.tolist() == [rouge_l(t, ex.target.strip()) for t, ex in zip(texts, examples)]
    assert cut_generation(" a title\n\nText: more") == "a title" and cut_generation("x\ny") == "x\ny"


def test_rouge_l_is_rouge_scores():
    from rouge_score import rouge_scorer

    # LCS of "the cat sat on the mat" and "the cat lay on a mat" is "the cat on mat": P = R = 4/6
    assert rouge_l("the cat sat on the mat", "the cat lay on a mat") == pytest.approx(4 / 6)
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    for pred, ref in (("Open a file.", "open the file"), ("", "x"), ("Return the path", "Return the PATH!")):
        assert rouge_l(pred, ref) == scorer.score(ref, pred)["rougeL"].fmeasure
    assert rouge_l("Return the path", "Return the PATH!") == 1.0


def cell(model, model_task, kind, fticl, test, test_task, ood, score):
    return {"model": model, "model_task": model_task, "model_kind": kind, "fticl": fticl, "test": test,
            "test_task": test_task, "ood": ood, "shots": 0, "score": score}


def test_generalization_findings_read_the_matrix():
    assert (cell_kind("a", "a", False), cell_kind("a", "a", True), cell_kind("a", "b", False)) == (IN, OUT, CROSS)
    cells = [cell("base", None, None, False, t, t.rstrip("_ood"), t.endswith("_ood"), 0.5)
             for t in ("gen", "gen_ood", "cls", "cls_ood")]
    cells += [cell("ft_gen", "gen", "generation", False, "gen", "gen", False, 0.9),
              cell("ft_gen", "gen", "generation", False, "gen_ood", "gen", True, 0.4),
              cell("ft_gen", "gen", "generation", False, "cls", "cls", False, 0.3),
              cell("icl_gen", "gen", "generation", True, "gen_ood", "gen", True, 0.6),
              cell("ft_cls", "cls", "classification", False, "cls_ood", "cls", True, 0.7)]
    out = generalization(cells)
    ft_gen = next(m for m in out["models"] if m["model"] == "ft_gen")
    assert ft_gen[IN] == pytest.approx(0.4) and ft_gen[OUT] == pytest.approx(-0.1) and ft_gen[CROSS] == pytest.approx(-0.2)
    worse, fticl = out["findings"]
    assert worse["holds"] is True and worse["generation_gain"] == pytest.approx(-0.15)
    assert fticl["holds"] is True and fticl["fticl_gain"] == pytest.approx(0.1)
    assert generalization(cells[:4])["findings"][0]["holds"] is None
