"""Converters of chat sources: the prompt is the dialogue so far (a list of messages, multi-turn allowed),
chosen and rejected are the two candidate final assistant turns."""

from __future__ import annotations

import os
import re

from train.data.rows import Dropped, as_text, converter, get, messages
from train.data.validation import DropReason

ASSISTANT_CUE = "\n\nAssistant:"
TURN = re.compile(r"\n\n(Human|Assistant):")


def parse_hh_dialogue(text: str) -> list[dict]:
    """"\\n\\nHuman: ...\\n\\nAssistant: ..." -> [{role, content}, ...]."""
    parts = TURN.split(text)
    if parts[0].strip():
        raise Dropped("malformed", "text before the first Human:/Assistant: turn")
    roles = ["user" if name == "Human" else "assistant" for name in parts[1::2]]
    return messages([{"role": r, "content": c} for r, c in zip(roles, parts[2::2])], "prompt")


@converter
def convert_hh_rlhf(row: dict, opts: dict):
    """Anthropic/hh-rlhf: chosen and rejected are whole dialogues that share every turn but the last.
    The shared prefix up to the last "Assistant:" cue is the prompt; what follows it is the response."""
    texts = [get(row, "chosen"), get(row, "rejected")]
    for field, value in zip(("chosen", "rejected"), texts):
        if not isinstance(value, str):
            raise Dropped("not_a_string", field)
    # A few dialogues start with "Human:" without the blank line; give them the usual separator.
    texts = [t if t.startswith("\n\n") else "\n\n" + t.lstrip("\n") for t in texts]
    cut = os.path.commonprefix(texts).rfind(ASSISTANT_CUE)
    if cut < 0:
        raise Dropped("malformed", "no shared Assistant: turn")
    answers = [t[cut + len(ASSISTANT_CUE):] for t in texts]
    if any(TURN.search(a) for a in answers):
        raise Dropped("malformed", "chosen and rejected differ before their last turn")
    history = parse_hh_dialogue(texts[0][:cut])
    if history[-1]["role"] != "user":
        raise Dropped("malformed", "the prompt does not end with a Human: turn")
    return [{"prompt": history, "chosen": as_text(answers[0], "chosen"), "rejected": as_text(answers[1], "rejected")}]


@converter
def convert_ultrafeedback(row: dict, opts: dict):
    """HuggingFaceH4/ultrafeedback_binarized (*_prefs splits): chosen and rejected are conversations
    [user, assistant, ...] sharing all but the last (assistant) message; score_chosen, score_rejected."""
    scores = row.get("score_chosen"), row.get("score_rejected")
    if all(isinstance(s, (int, float)) for s in scores) and scores[0] == scores[1]:
        return DropReason("tie", "score_chosen == score_rejected")
    chosen, rejected = messages(get(row, "chosen"), "chosen"), messages(get(row, "rejected"), "rejected")
    if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
        raise Dropped("malformed", "the last message is not the assistant's")
    if chosen[:-1] != rejected[:-1]:
        raise Dropped("malformed", "chosen and rejected differ before their last message")
    history = chosen[:-1] or [{"role": "user", "content": as_text(get(row, "prompt"), "prompt")}]
    if history[-1]["role"] != "user":
        raise Dropped("malformed", "the prompt does not end with a user message")
    return [{"prompt": history, "chosen": chosen[-1]["content"], "rejected": rejected[-1]["content"]}]


@converter
def convert_ultrafeedback_sft(row: dict, opts: dict):
    """ultrafeedback_binarized (*_sft splits): messages [user, assistant, ...]; the last turn is the target."""
    conversation = messages(get(row, "messages"), "messages")
    if len(conversation) < 2 or conversation[-1]["role"] != "assistant":
        raise Dropped("malformed", "messages must end with an assistant turn after a prompt")
    return [{"prompt": conversation[:-1], "completion": conversation[-1]["content"]}]
