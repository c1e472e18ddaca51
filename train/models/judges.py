"""Judges: the reward of a response to a prompt, for scoring samples after DPO (train/pipeline/evaluate.py).

judge=<rule> (train/data JUDGES, e.g. sentiment): a function of the response text alone.
judge=reward_model: any AutoModelForSequenceClassification with one label, as TRL's RewardTrainer and most hub
reward models are trained (Bradley-Terry); the reward is that label's logit for prompt + response, rendered with
the reward model's own tokenizer and chat template (the format it was trained on), never the policy's.
Every judge has one method, `score(prompts, responses) -> list[float]`: prompts as the data gives them (text or
chat messages), responses as text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Protocol

import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from train.core.errors import ConfigError
from train.core.paths import looks_like_local_path
from train.data import JUDGES
from train.models.loading import resolve_chat_template
from train.config.choices import JudgeKind
from train.config.schema import JudgeConfig



class Judge(Protocol):
    def score(self, prompts: list, responses: list[str]) -> list[float]: ...


def response_text(response) -> str:
    """A response as the data gives it (text, or one assistant message) -> its text."""
    return response[-1]["content"] if isinstance(response, list) else response


class RuleJudge:
    def __init__(self, rule: Callable[[str], float]):
        self.rule = rule

    def score(self, prompts: list, responses: list[str]) -> list[float]:
        return [float(self.rule(r)) for r in responses]


class RewardModelJudge:
    def __init__(self, model, tokenizer, batch_size: int, max_length: int, progress: bool = False,
                 desc: str = "eval: judging"):
        self.model, self.tokenizer, self.batch_size, self.max_length = model, tokenizer, batch_size, max_length
        self.progress, self.desc = progress, desc  # a tqdm bar over batches (the main process's), and its label

    def render(self, prompt, response: str) -> str:
        if isinstance(prompt, list):
            messages = [*prompt, {"role": "assistant", "content": response}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        return prompt + response

    @torch.no_grad()
    def score(self, prompts: list, responses: list[str]) -> list[float]:
        texts = [self.render(p, r) for p, r in zip(prompts, responses)]
        # Scored once per distinct text: identical policy and reference samples get the identical reward (a tie),
        # whatever padding their batches had.
        unique = list(dict.fromkeys(texts))
        # A chat template writes its own special tokens (as TRL tokenizes rendered chats); plain text gets them here.
        templated = bool(prompts) and isinstance(prompts[0], list)
        rewards: dict[str, float] = {}
        starts = range(0, len(unique), self.batch_size)
        for start in tqdm(starts, desc=self.desc, unit="batch", disable=not self.progress or not starts):
            chunk = unique[start : start + self.batch_size]
            batch = self.tokenizer(chunk, return_tensors="pt", padding=True, truncation=True,
                                   max_length=self.max_length, add_special_tokens=not templated).to(self.model.device)
            rewards.update(zip(chunk, self.model(**batch).logits[:, 0].float().tolist()))
        return [rewards[t] for t in texts]


def check_config(cfg: DictConfig) -> None:
    """The judge group, without reading any file: a known kind, and what reward_model needs."""
    judge = cfg.judge
    if judge.kind not in (JudgeKind.none, JudgeKind.reward_model) and judge.kind not in JUDGES:
        raise ConfigError(f"judge.kind={judge.kind}: no such rule in train/data JUDGES ({', '.join(JUDGES)}); "
                          "pick another judge (judge=<name>)")
    # A missing name_or_path is refused by check_reward_model, before training: an option must compose and pass
    # these checks on its own (tests/test_config.py), as data=custom does without its required data.source.
    if judge.kind == JudgeKind.reward_model:
        check_reward_model_settings(judge)


def check_reward_model_settings(judge: JudgeConfig, key: str = "judge") -> None:
    """Reads no file: a local name_or_path is a directory, and sizes that can score anything."""
    if not judge.name_or_path:
        return
    name = judge.name_or_path
    if looks_like_local_path(name) and not Path(name).expanduser().is_dir():
        raise ConfigError(f"{key}.name_or_path={name}: no such directory; give a reward model directory or a hub id")
    if judge.batch_size < 1 or judge.max_length < 2:
        raise ConfigError(f"{key}.batch_size={judge.batch_size}, {key}.max_length={judge.max_length}: "
                          "must be >= 1 and >= 2")


def check_reward_model(judge: JudgeConfig, conversational: bool) -> None:
    """Before training, what would otherwise fail at evaluation, after it: the reward model's config (one
    label) and tokenizer (a chat template for chat data). Reads no weights."""
    if judge.kind == JudgeKind.reward_model:
        check_reward_model_spec(judge, conversational)


def check_reward_model_spec(judge: JudgeConfig, conversational: bool, key: str = "judge") -> None:
    """check_reward_model for any group holding JudgeConfig's fields (judge, labeler); `key` names it in errors."""
    if not judge.name_or_path:  # conf/<group>/reward_model.yaml's `???` leaves the schema's null in place
        raise ConfigError(f"{key}.name_or_path is required by {key}=reward_model: give a reward model directory or "
                          "hub id")
    try:
        config = AutoConfig.from_pretrained(judge.name_or_path, revision=judge.revision,
                                            trust_remote_code=judge.trust_remote_code)
    except (OSError, ValueError) as err:  # hub unreachable, gated, not a model directory
        raise ConfigError(f"{key}.name_or_path={judge.name_or_path}: could not load its config "
                          f"({first_line(err)})") from err
    if config.num_labels != 1:
        raise ConfigError(f"{key}.name_or_path={judge.name_or_path}: a classifier with {config.num_labels} labels; "
                          "a reward model has one (its logit is the reward)")
    load_judge_tokenizer(judge, conversational, key)


def load_judge_tokenizer(judge: JudgeConfig, conversational: bool, key: str = "judge"):
    try:
        tokenizer = AutoTokenizer.from_pretrained(judge.name_or_path, revision=judge.revision,
                                                  trust_remote_code=judge.trust_remote_code)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{key}.name_or_path={judge.name_or_path}: could not load its tokenizer "
                          f"({first_line(err)})") from err
    if judge.chat_template is not None:
        tokenizer.chat_template = resolve_chat_template(judge.chat_template)
    if conversational and tokenizer.chat_template is None:
        raise ConfigError(f"{key}.name_or_path={judge.name_or_path} has no chat template but data.conversational=true: "
                          f"set {key}.chat_template (e.g. chatml) or data.conversational=false")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Past max_length, cut the start of the prompt: the end holds the sample being judged.
    tokenizer.truncation_side = "left"
    return tokenizer


def load_judge(judge: JudgeConfig, conversational: bool, device: torch.device,
               progress: bool = False) -> Optional[Judge]:
    """The configured judge (None for judge=none); a reward model is loaded whole onto `device`."""
    if judge.kind == JudgeKind.none:
        return None
    if judge.kind in JUDGES:
        return RuleJudge(JUDGES[judge.kind])
    return load_reward_model(judge, conversational, device, progress)


def load_reward_model(judge: JudgeConfig, conversational: bool, device: torch.device, progress: bool = False,
                      key: str = "judge", desc: str = "eval: judging") -> RewardModelJudge:
    """A reward model from any group holding JudgeConfig's fields (judge, labeler), loaded whole onto `device`."""
    tokenizer = load_judge_tokenizer(judge, conversational, key)
    model = AutoModelForSequenceClassification.from_pretrained(
        judge.name_or_path, dtype=judge.dtype, revision=judge.revision, trust_remote_code=judge.trust_remote_code,
    ).to(device).eval()
    if model.config.pad_token_id is None:  # it finds each row's last token by the pad id
        model.config.pad_token_id = tokenizer.pad_token_id
    return RewardModelJudge(model, tokenizer, judge.batch_size, judge.max_length, progress, desc)


def describe(judge: JudgeConfig) -> Optional[str]:
    """The judge as results.json names it: its kind, and for a reward model what was loaded."""
    if judge.kind == JudgeKind.none:
        return None
    return f"reward_model:{judge.name_or_path}" if judge.kind == JudgeKind.reward_model else str(judge.kind)


def first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
