"""An on-policy round's first two steps: sample generate.num_samples answers per prompt from each model, then label
every answer. Both are sharded over ranks and resumable.

The round's prompts are cut into chunks of generate.chunk_prompts; rank r takes chunks r, r + world, ... and writes
each chunk's answers (then its labels) to a file of its own, atomically. A rerun skips every chunk whose file exists,
so a stopped generation resumes where it was and nothing is generated twice, on any number of processes. Each answer
draws from its own random stream (round, model, prompt index, sample: train/models/generation.py), so 1 and N
processes write the same answers.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from transformers.integrations.deepspeed import unset_hf_deepspeed_config

from train.config.onpolicy_schema import GenerateConfig
from train.config.schema import MainConfig
from train.core.errors import ConfigError
from train.core.files import read_json, write_json, write_jsonl
from train.core.ranks import is_main_process
from train.data.rows import prompt_key
from train.models.generation import answer_seed, sample_answers
from train.models.labelers import load_labeler, score_answers
from train.models.loading import load_model, load_tokenizer
from train.models.sampling import render_prompts
from train.pipeline.evaluate import free, join_process_group
from train.runtime.distributed import barrier

ANSWERS, LABELS = "answers", "labels"
WEIGHTS = ("*.safetensors", "*.bin", "*.pt")


def resolve_models(generate: GenerateConfig, policy: Path, sft: Path, base: str) -> list[tuple[str, str]]:
    """(name, path) of each generate.models entry: `policy` (the model being tuned), `sft`, `base`, or a path to a
    model directory, a checkpoint, or a finished run (its policy/). A path without weights is one line, at start."""
    out = []
    for entry in generate.models:
        entry = str(entry)
        if entry in ("policy", "sft", "base"):
            out.append((entry, str({"policy": policy, "sft": sft, "base": base}[entry])))
            continue
        path = Path(entry).expanduser()
        if (path / "policy" / "config.json").is_file():
            path = path / "policy"  # a finished run's directory
        if not (path / "config.json").is_file() or not any(f for w in WEIGHTS for f in path.glob(w)):
            raise ConfigError(f"generate.models: {entry} is not a model directory with weights (config.json and "
                              "*.safetensors): give a model directory, a checkpoint, or a finished run's directory")
        out.append((path.name, str(path.resolve())))
    if len({name for name, _ in out}) != len(out):
        raise ConfigError(f"generate.models lists the same model twice ({', '.join(n for n, _ in out)}): list each once")
    return out


def settings(cfg: MainConfig, models: list[tuple[str, str]], prompts: list, round_index: int) -> dict:
    """What the answers depend on; answers written under other settings are not reused."""
    g = cfg.generate
    return {"round": round_index, "seed": cfg.seed, "models": [name for name, _ in models],
            "num_samples": g.num_samples, "max_new_tokens": g.max_new_tokens, "temperature": g.temperature,
            "top_p": g.top_p, "chunk_prompts": g.chunk_prompts,
            "prompts": hashlib.sha256(json.dumps(prompts, sort_keys=True).encode()).hexdigest()}


def start_fresh_if_changed(round_dir: Path, wanted: dict) -> None:
    """Main process: a round directory whose answers were made with other settings starts again (said out loud)."""
    path = round_dir / "answers_settings.json"
    if is_main_process():
        round_dir.mkdir(parents=True, exist_ok=True)
        saved = read_json(path) if path.exists() else None
        if saved is not None and saved != wanted:
            print(f"answers: {round_dir} holds answers made with other settings; sampling again", flush=True)
            for name in (ANSWERS, LABELS):
                shutil.rmtree(round_dir / name, ignore_errors=True)
        write_json(path, wanted)
    barrier()


def chunk_file(round_dir: Path, kind: str, model: str, chunk: int, create: bool = False) -> Path:
    path = round_dir / kind / model / f"chunk-{chunk:05d}.jsonl"
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
    return path


def my_chunks(count: int, rank: int, world: int) -> list[int]:
    return list(range(rank, count, world))


def generate_answers(cfg: MainConfig, models: list[tuple[str, str]], prompts: list, round_dir: Path,
                     round_index: int) -> list[dict]:
    """Every answer of the round, in (model, prompt, sample) order, on every rank: {prompt_id, prompt, model, sample,
    answer, tokens, stopped, round}."""
    # Sampling loads whole models on every rank; with a trainer's ZeRO-3 config still registered, from_pretrained
    # would partition them with zero.Init and wait forever for the other ranks (as evaluation does).
    unset_hf_deepspeed_config()
    rank, world, device = join_process_group(cfg.faults)
    start_fresh_if_changed(round_dir, settings(cfg, models, prompts, round_index))
    g, size = cfg.generate, cfg.generate.chunk_prompts
    chunks = (len(prompts) + size - 1) // size
    for model_index, (name, path) in enumerate(models):
        todo = [c for c in my_chunks(chunks, rank, world) if not chunk_file(round_dir, ANSWERS, name, c).exists()]
        if not todo:
            continue
        tokenizer = load_tokenizer(cfg.model, path, cfg.data.conversational)
        model = load_model(cfg.model, path).to(device).eval()
        base_seed = answer_seed(cfg.seed, round_index, model_index)
        for chunk in todo:
            low, high = chunk * size, min(len(prompts), (chunk + 1) * size)
            texts = render_prompts(tokenizer, [as_chat(p, cfg.data.conversational) for p in prompts[low:high]], cfg.data.conversational)
            answers = sample_answers(model, tokenizer, texts, g.num_samples,
                                     lambda i, j: answer_seed(base_seed, low + i, j), g.max_new_tokens,
                                     g.temperature, g.top_p, g.batch_size)
            rows = [{"prompt_id": prompt_id(prompts[low + i]), "prompt": prompts[low + i], "model": name, "sample": j,
                     "answer": answers.texts[i][j], "tokens": len(answers.token_ids[i][j]),
                     "stopped": answers.stopped[i][j], "round": round_index}
                    for i in range(high - low) for j in range(g.num_samples)]
            write_jsonl(chunk_file(round_dir, ANSWERS, name, chunk, create=True), rows)
            if is_main_process():
                print(f"answers: {name} chunk {chunk + 1}/{chunks} ({high - low} prompts x {g.num_samples})", flush=True)
        free(model)
    barrier()
    return read_chunks(round_dir, ANSWERS, models, chunks)


def label_answers(cfg: MainConfig, models: list[tuple[str, str]], num_prompts: int, round_dir: Path) -> list[float]:
    """The labeler's score of every answer, in generate_answers' order (each rank labels its own chunks)."""
    unset_hf_deepspeed_config()
    rank, world, device = join_process_group(cfg.faults)
    chunks = (num_prompts + cfg.generate.chunk_prompts - 1) // cfg.generate.chunk_prompts
    todo = [(name, c) for name, _ in models for c in my_chunks(chunks, rank, world)
            if not chunk_file(round_dir, LABELS, name, c).exists()]
    if todo:
        labeler = load_labeler(cfg.labeler, cfg.data.conversational, device, progress=is_main_process())
        for name, chunk in todo:
            rows = [json.loads(line) for line in chunk_file(round_dir, ANSWERS, name, chunk).read_text().splitlines()]
            scores = score_answers(labeler, [{"prompt": r["prompt"], "text": r["answer"]} for r in rows])
            write_jsonl(chunk_file(round_dir, LABELS, name, chunk, create=True), [{"score": s} for s in scores])
        del labeler
    barrier()
    return [row["score"] for row in read_chunks(round_dir, LABELS, models, chunks)]


def read_chunks(round_dir: Path, kind: str, models: list[tuple[str, str]], chunks: int) -> list[dict]:
    rows = []
    for name, _ in models:
        for chunk in range(chunks):
            path = chunk_file(round_dir, kind, name, chunk)
            if not path.exists():
                raise ConfigError(f"{path} is missing after every rank finished its {kind}: rerun to make it again")
            rows += [json.loads(line) for line in path.read_text().splitlines()]
    return rows


def as_chat(prompt, conversational: bool):
    """A text prompt from a prompt file or template, as the data group presents prompts (chat: one user turn)."""
    if conversational and isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return prompt


def prompt_id(prompt) -> str:
    """A stable id of a prompt (text or messages): what maps an answer back to its prompt in every file."""
    return hashlib.sha256(prompt_key(prompt).encode()).hexdigest()[:16]
