"""`python launch/bench.py --only generate`: on-policy answer sampling (train/models/generation.py
sample_answers) against transformers' model.generate(do_sample=True, num_return_sequences=N), N answers per
prompt, on the ~20M Llama at the length profiles' prompt lengths (launch/bench_profiles.py), at the tokenizer's
vocabulary and at 32k.

Both sides get the same prompts in the same batches (sorted by token length, as sample_answers batches them),
the same batch size, temperature 1 with no top-k / top-p, and generate exactly max_new_tokens per answer
(min_new_tokens = max_new_tokens: EOS held back on both sides, so neither stops early). max_new_tokens is the
profile's median response length, capped for CPU time. Each round runs both sides, the order reversed every
round; a ratio is the median over rounds of answers/s of sample_answers / answers/s of generate() within a
round. Figures per side and round: answers/s, generated tokens/s, wall seconds.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM

from launch.bench_profile_runs import SIZES as PROFILE_SIZES, wide_vocab_model
from launch.bench_profiles import MAX_LENGTH, PROFILES, make_pairs, single_token_words
from launch.bench_setup import compose, data_overrides, model_overrides
from train.models.generation import answer_seed, sample_answers
from train.models.loading import ensure_base_model, load_tokenizer
from train.models.sampling import render_prompts

# 8 prompts in 2 batches of 4 (16 rows decoding); responses capped at 128 tokens: UltraFeedback's 288 would make
# its profile alone ~10 min of the 2 cores per vocabulary.
SIZES = {"model": PROFILE_SIZES["model"], "model_dir": PROFILE_SIZES["model_dir"], "prompts": 8, "batch": 4,
         "num_samples": 4, "max_new_cap": 128, "prompt_cap": MAX_LENGTH, "rounds": 3, "vocabs": [32000, None],
         "seed": 0}
# --quick: the embedded tiny model (256 positions), prompts cut to 48 tokens; a smoke run, not a measurement.
QUICK = {"model": None, "prompts": 2, "batch": 2, "max_new_cap": 4, "prompt_cap": 48, "rounds": 1, "vocabs": [None]}
SIDES = ("generate", "sample_answers")
TARGETS = {"tldr": 2.0, "hh": 1.3, "ultrafeedback": 1.1}


def profile_prompts(name: str, tokenizer, words: list[str], sizes: dict) -> tuple[list[str], int]:
    """Rendered prompts of the profile's lengths and the answers' length (the profile's median response)."""
    profile = PROFILES[name]
    max_new = min(int(round(profile.response_median)), sizes["max_new_cap"])
    # Room for the answer and the chat template's role tokens within the model's 1024 positions.
    cap = min(sizes["prompt_cap"], MAX_LENGTH - max_new - 16)
    pairs = make_pairs(profile, sizes["prompts"], words, seed=sizes["seed"], max_length=cap)
    return render_prompts(tokenizer, list(pairs["prompt"]), True), max_new


def batches_by_length(prompts: list[str], tokenizer, batch: int) -> list[list[int]]:
    """sample_answers' batching (longest first), given to generate() too: both sides pad alike."""
    lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    return [order[s : s + batch] for s in range(0, len(order), batch)]


def run_generate(model, tokenizer, prompts, batches, n: int, max_new: int) -> int:
    tokenizer.padding_side = "left"
    tokens = 0
    for chunk in batches:
        batch = tokenizer([prompts[i] for i in chunk], return_tensors="pt", padding=True, add_special_tokens=False)
        out = model.generate(**batch.to(model.device), do_sample=True, num_return_sequences=n, temperature=1.0,
                             top_k=0, top_p=1.0, max_new_tokens=max_new, min_new_tokens=max_new,
                             pad_token_id=tokenizer.pad_token_id)
        tokens += out[:, batch["input_ids"].shape[1]:].numel()
    return tokens


def run_sample_answers(model, tokenizer, prompts, batches, n: int, max_new: int, seed: int) -> int:
    tokens = 0
    for chunk in batches:
        answers = sample_answers(model, tokenizer, [prompts[i] for i in chunk], n,
                                 lambda i, j: answer_seed(seed, chunk[i], j), max_new, 1.0, batch_size=len(chunk),
                                 min_new_tokens=max_new)
        tokens += sum(map(sum, answers.num_tokens))
    return tokens


def time_side(side: str, model, tokenizer, prompts, batches, n: int, max_new: int, seed: int) -> dict:
    start = time.perf_counter()
    if side == "generate":
        tokens = run_generate(model, tokenizer, prompts, batches, n, max_new)
    else:
        tokens = run_sample_answers(model, tokenizer, prompts, batches, n, max_new, seed)
    seconds = time.perf_counter() - start
    answers = len(prompts) * n
    assert tokens == answers * max_new, (side, tokens, answers, max_new)  # both sides ran to max_new_tokens
    return {"answers_per_s": answers / seconds, "tokens_per_s": tokens / seconds, "seconds": seconds,
            "loadavg": open("/proc/loadavg").read().split()[:3]}


def paired(sides: dict[str, list[dict]], key: str) -> float:
    return statistics.median(a[key] / b[key] for a, b in zip(sides["sample_answers"], sides["generate"]))


def generation(sizes: dict, root: Path) -> dict:
    """Every profile at every vocabulary, both sides per round, alternated."""
    sizes = {**SIZES, **sizes}
    cfg = compose([*model_overrides(sizes, root), *data_overrides(16, 16), f"output_root={root / 'generate'}",
                   "sft.enabled=false"]).config
    base = ensure_base_model(cfg.model)
    tokenizer = load_tokenizer(cfg.model, base, cfg.data.conversational)
    words = single_token_words(tokenizer)
    n = sizes["num_samples"]
    result = {"sizes": sizes, "threads": torch.get_num_threads(), "by_vocab": {}}
    for vocab in sizes["vocabs"]:
        wide = root / "models" / f"{sizes['model_dir']}-v{vocab}"
        path = base if vocab is None else wide_vocab_model(base, vocab, wide, tokenizer)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa").eval()
        label = str(vocab or len(tokenizer))
        result["by_vocab"][label] = {}
        for name in PROFILES:
            prompts, max_new = profile_prompts(name, tokenizer, words, sizes)
            batches = batches_by_length(prompts, tokenizer, sizes["batch"])
            for side in SIDES:  # warm-up, untimed: first-call costs (allocator, kernels) on neither side's clock
                time_side(side, model, tokenizer, prompts[:1], [[0]], n, 2, sizes["seed"])
            sides = {s: [] for s in SIDES}
            for r in range(sizes["rounds"]):
                for side in SIDES if r % 2 == 0 else SIDES[::-1]:
                    run = time_side(side, model, tokenizer, prompts, batches, n, max_new, sizes["seed"])
                    sides[side].append(run)
                    print(f"bench: generate vocab {label} {name} round {r + 1} {side}: {run['answers_per_s']:.2f} "
                          f"answers/s, {run['tokens_per_s']:.0f} tokens/s, load {' '.join(run['loadavg'])}", flush=True)
            lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
            result["by_vocab"][label][name] = {
                "speedup": paired(sides, "answers_per_s"), "prompt_median": float(np.median(lengths)),
                "max_new_tokens": max_new, "sides": sides}
        del model
    headline = result["by_vocab"][str(sizes["vocabs"][0] or len(tokenizer))]
    result["speedup"] = {name: f["speedup"] for name, f in headline.items()}
    return result


def generation_rows(result: dict) -> list[str]:
    """The table's lines for the generate part (launch/bench_runs.py format_rows)."""
    s = result["sizes"]
    lines = ["", f"On-policy sampling, {s['num_samples']} answers per prompt, {s['prompts']} prompts in batches of "
             f"{s['batch']}, {s['rounds']} alternating round(s), {result['threads']} threads: medians per side; "
             "speedup = sample_answers / generate(num_return_sequences), median of per-round ratios",
             f"  {'vocab':>6} {'profile':<14} {'prompt/new':>10} {'generate ans/s':>14} {'tok/s':>7} "
             f"{'sample_answers ans/s':>20} {'tok/s':>7} {'speedup':>8} {'target':>7}"]
    for vocab, by_profile in result["by_vocab"].items():
        for name, f in by_profile.items():
            med = {side: {k: statistics.median(r[k] for r in runs) for k in ("answers_per_s", "tokens_per_s")}
                   for side, runs in f["sides"].items()}
            lines.append(f"  {vocab:>6} {name:<14} {f['prompt_median']:5.0f}/{f['max_new_tokens']:<4} "
                         f"{med['generate']['answers_per_s']:14.2f} {med['generate']['tokens_per_s']:7.0f} "
                         f"{med['sample_answers']['answers_per_s']:20.2f} {med['sample_answers']['tokens_per_s']:7.0f} "
                         f"{f['speedup']:8.2f} {'>= ' + str(TARGETS[name]):>7}")
    return lines
