"""On-policy answers (train/models/generation.py): N samples per prompt from one shared prefill equal sampling
each (prompt, sample) alone with generate() and the same seed, token for token; the prompt is prefilled once;
and the benchmark part (launch/bench_generate.py) runs in its quick mode."""

import json
import os
import random
import subprocess
import sys

import pytest
import torch
from transformers import (AutoModelForCausalLM, AutoTokenizer, LogitsProcessorList, Qwen2Config, Qwen2ForCausalLM,
                          TemperatureLogitsWarper, TopPLogitsWarper)

from helpers.runs import REPO
from launch.bench_generate import QUICK, generation, generation_rows
from train.data import synthetic
from train.models.generation import answer_seed, eos_token_ids, sample_answers
from train.models.sampling import PerPromptSampling, render_prompts
from train.models.tiny import build_tiny_model, build_tokenizer

TINY_SPEC = {"vocab_size": 1024, "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
             "num_attention_heads": 4, "max_position_embeddings": 256}  # conf/model/tiny.yaml's


def alone(model, tokenizer, prompt: str, seed: int, max_new_tokens: int, temperature: float, top_p: float = 1.0):
    """One answer sampled on its own: generate() on a batch of one prompt (no padding, no shared cache), with the
    answer's seed in PerPromptSampling (temperature and nucleus first, as generate()'s warpers)."""
    batch = tokenizer([prompt], return_tensors="pt", add_special_tokens=False)
    warpers = [TemperatureLogitsWarper(temperature)] + ([TopPLogitsWarper(top_p)] if top_p < 1 else [])
    out = model.generate(**batch, do_sample=False, temperature=None, top_k=None, top_p=None,
                         logits_processor=LogitsProcessorList([*warpers, PerPromptSampling([seed], 1.0)]),
                         max_new_tokens=max_new_tokens, eos_token_id=eos_token_ids(model, tokenizer),
                         pad_token_id=tokenizer.pad_token_id)
    return out[0, batch["input_ids"].shape[1]:].tolist()


def stop_often(model, tokenizer, extra: int) -> None:
    """Random weights put EOS at ~1/vocab a step: `extra` more end-of-turn ids in the generation config (as Qwen's
    lists several) make many answers end early, so rows leave the batch mid-way."""
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, *range(100, 100 + extra)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The embedded tiny model (train/models/tiny.py), loaded from its directory as the pipeline loads it."""
    path = build_tiny_model(tmp_path_factory.mktemp("gen") / "tiny", TINY_SPEC, synthetic.corpus(0), seed=0)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa", dtype=torch.float32).eval()
    rng = random.Random(0)
    # 1 to 6 user requests in one message: prompts of 12 to ~60 tokens, so batches are left-padded.
    prompts = render_prompts(tokenizer, [[{"role": "user", "content": " ".join(synthetic.make_prompt(rng)
                                                                               for _ in range(k))}]
                                         for k in (1, 6, 3, 2, 5)], True)
    return model, tokenizer, prompts


def random_qwen2(tokenizer, seed: int = 0):
    """A randomly initialized Qwen2 (attention biases, grouped-query heads, untied head), fp32, sdpa."""
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=False, attn_implementation="sdpa")
    return Qwen2ForCausalLM(config).eval()


def assert_each_answer_as_alone(model, tokenizer, prompts, answers, seed_of, max_new_tokens, temperature, top_p=1.0):
    eos = set(eos_token_ids(model, tokenizer))
    for i, prompt in enumerate(prompts):
        for j, ids in enumerate(answers.token_ids[i]):
            assert ids == alone(model, tokenizer, prompt, seed_of(i, j), max_new_tokens, temperature, top_p), (i, j)
            assert answers.stopped[i][j] == (ids[-1] in eos) and (answers.stopped[i][j] or len(ids) == max_new_tokens)
            want = tokenizer.decode(ids[:-1] if answers.stopped[i][j] else ids, skip_special_tokens=True)
            assert answers.texts[i][j] == want


def test_answers_of_the_tiny_model_equal_sampling_each_alone(tiny):
    model, tokenizer, prompts = tiny
    stop_often(model, tokenizer, extra=30)
    seed_of = lambda i, j: answer_seed(7, i, j)  # noqa: E731
    answers = sample_answers(model, tokenizer, prompts, 3, seed_of, max_new_tokens=20, temperature=1.0, batch_size=2)
    assert_each_answer_as_alone(model, tokenizer, prompts, answers, seed_of, 20, 1.0)
    stopped = sum(map(sum, answers.stopped))
    assert 0 < stopped < 15  # some rows left the batch early, others ran to max_new_tokens
    assert len({tuple(ids) for per_prompt in answers.token_ids for ids in per_prompt}) == 15  # 15 different draws
    # Batch size and the company of other prompts change nothing: a rank holding prompts 1 and 3 only, with the
    # seeds of their global indices, draws the same answers.
    again = sample_answers(model, tokenizer, prompts, 3, seed_of, 20, 1.0, batch_size=5)
    share = sample_answers(model, tokenizer, [prompts[1], prompts[3]], 3, lambda i, j: seed_of((1, 3)[i], j), 20, 1.0,
                           batch_size=1)
    assert again == answers and share.token_ids == [answers.token_ids[1], answers.token_ids[3]]


def test_left_padded_qwen2_with_nucleus_sampling_equals_sampling_each_alone():
    tokenizer = build_tokenizer(synthetic.corpus(0), 1000)
    model = random_qwen2(tokenizer)
    stop_often(model, tokenizer, extra=30)
    rng = random.Random(1)
    prompts = [" ".join(synthetic.make_prompt(rng) for _ in range(rng.randint(1, 12))) for _ in range(7)]
    lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    assert max(lengths) > 3 * min(lengths)  # rows padded by up to ~80 positions
    seeds = [answer_seed(3, i, j) for i in range(7) for j in range(4)]  # a flat list, prompt-major
    answers = sample_answers(model, tokenizer, prompts, 4, seeds, max_new_tokens=24, temperature=0.8, top_p=0.9,
                             batch_size=3)
    assert_each_answer_as_alone(model, tokenizer, prompts, answers, lambda i, j: seeds[i * 4 + j], 24, 0.8, 0.9)
    assert 0 < sum(map(sum, answers.stopped)) < 28


def test_greedy_answers_are_all_the_same_and_are_generates_greedy_answer():
    tokenizer = build_tokenizer(synthetic.corpus(0), 1000)
    model = random_qwen2(tokenizer, seed=1)
    prompts = ["write a review of the movie", " ".join(["write a review of the book"] * 5)]
    answers = sample_answers(model, tokenizer, prompts, 3, lambda i, j: i * 10 + j, 12, temperature=0.0)
    for prompt, per_prompt in zip(prompts, answers.token_ids):
        batch = tokenizer([prompt], return_tensors="pt", add_special_tokens=False)
        greedy = model.generate(**batch, do_sample=False, max_new_tokens=12, pad_token_id=tokenizer.pad_token_id,
                                eos_token_id=eos_token_ids(model, tokenizer))[0, batch["input_ids"].shape[1]:].tolist()
        assert per_prompt == [greedy] * 3


def test_each_prompt_is_prefilled_once_for_all_its_samples(tiny):
    """generate(num_return_sequences=N) runs N copies of every prompt through the model; here each prompt's
    positions go through it once, and every later forward is one new token per live row."""
    model, tokenizer, prompts = tiny
    shapes = []
    hook = model.model.register_forward_pre_hook(lambda m, args, kwargs: shapes.append(kwargs["input_ids"].shape),
                                                 with_kwargs=True)
    try:
        sample_answers(model, tokenizer, prompts, 4, lambda i, j: j, max_new_tokens=5, temperature=1.0, batch_size=5)
    finally:
        hook.remove()
    lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    assert shapes[0] == (5, max(lengths))  # one prefill of the 5 prompts, not of 20 rows
    assert all(s[1] == 1 and s[0] <= 20 for s in shapes[1:]) and len(shapes) <= 5


def test_seeds_must_cover_every_answer():
    tokenizer = build_tokenizer(synthetic.corpus(0), 1000)
    with pytest.raises(ValueError, match="one per answer"):
        sample_answers(random_qwen2(tokenizer), tokenizer, ["a", "b"], 2, [1, 2, 3], 4, 1.0)


def test_the_generate_bench_part_runs_in_quick_mode(tmp_path):
    result = generation(QUICK, tmp_path)
    assert set(result["speedup"]) == {"tldr", "ultrafeedback", "hh"}
    for figures in result["by_vocab"][next(iter(result["by_vocab"]))].values():
        assert figures["speedup"] > 0
        assert len(figures["sides"]["generate"]) == len(figures["sides"]["sample_answers"]) == 1
        assert figures["sides"]["sample_answers"][0]["tokens_per_s"] > 0
    table = "\n".join(generation_rows(result))
    assert "sample_answers" in table and "tldr" in table and "speedup" in table


@pytest.mark.slow
def test_bench_only_generate_quick_prints_a_table_and_one_json_object_last(tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "launch/bench.py", "--only", "generate", "--quick", "--out", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert set(result["generate"]) == {"tldr", "ultrafeedback", "hh"} and result["mode"] == "quick"
    assert "On-policy sampling" in "\n".join(lines[:-1])
