"""Converters of single-turn sources: one native row -> canonical pairs (see rows.py for the contract).

Each reads the documented schema of its dataset (field names in the docstrings) and nothing else, so a
changed upstream schema shows up as missing_field counts in the report rather than as odd pairs.
"""

from __future__ import annotations

import re

from train.data.ranking import rank_to_pairs
from train.data.rows import Dropped, as_text, converter, get, messages, number, text
from train.data.validation import DropReason, Fix, check_text

# WebGPT answers cite the browsing quotes as [1], [2, 3]; the prompt carries no quotes, so the markers
# would teach the policy to cite sources it never saw.
CITATION = re.compile(r"\s*\[\d+(?:\s*,\s*\d+)*\]")


@converter
def convert_webgpt(row: dict, opts: dict):
    """openai/webgpt_comparisons: question.full_text; answer_0/answer_1 with score_0/score_1 in [-1, 1]."""
    scores = number(row, "score_0"), number(row, "score_1")
    if scores[0] == scores[1]:
        return DropReason("tie", "score_0 == score_1")
    prompt = text(row, "question.full_text")
    answers = [text(row, "answer_0"), text(row, "answer_1")]
    if opts["strip_citations"]:
        answers = [as_text(CITATION.sub("", a), f"answer_{i} (citations removed)") for i, a in enumerate(answers)]
    best = 0 if scores[0] > scores[1] else 1
    return [{"prompt": prompt, "chosen": answers[best], "rejected": answers[1 - best]}]


def tldr_prompt(info: dict) -> str:
    """The TL;DR task's prompt (Stiennon et al., 2020): subreddit, title, post; CNN/DM rows carry an article."""
    if info.get("post") is not None:
        label, body = "POST", as_text(info["post"], "info.post")
    elif info.get("article") is not None:
        label, body = "ARTICLE", as_text(info["article"], "info.article")
    else:
        raise Dropped("missing_field", "info.post")
    parts = [f"SUBREDDIT: r/{info['subreddit'].strip()}"] if isinstance(info.get("subreddit"), str) else []
    if isinstance(info.get("title"), str) and info["title"].strip():
        parts.append(f"TITLE: {info['title'].strip()}")
    return "\n\n".join(parts + [f"{label}: {body}", "TL;DR:"])


@converter
def convert_summarize(row: dict, opts: dict):
    """openai/summarize_from_feedback (comparisons): info {post, title, subreddit, article}, summaries
    [{text, policy, note}] x 2, choice (index of the preferred summary)."""
    prompt = tldr_prompt(get(row, "info"))
    summaries, choice = get(row, "summaries"), get(row, "choice")
    if not isinstance(summaries, list) or len(summaries) != 2:
        raise Dropped("malformed", "summaries (expected 2)")
    if choice not in (0, 1):
        raise Dropped("malformed", f"choice={choice!r}")
    texts = [as_text(s.get("text") if isinstance(s, dict) else None, f"summaries[{i}].text") for i, s in enumerate(summaries)]
    return [{"prompt": prompt, "chosen": texts[choice], "rejected": texts[1 - choice]}]


def ranked(prompt, responses, scores, opts: dict, field: str):
    """Pairs from scored responses via rank_to_pairs; unusable answers are left out and counted as fixes."""
    if not isinstance(responses, list) or not isinstance(scores, list) or len(responses) != len(scores):
        raise Dropped("malformed", f"{field}: responses and scores must be lists of equal length")
    fixes, kept, kept_scores = [], [], []
    for i, (response, score) in enumerate(zip(responses, scores)):
        problem = check_text(response, f"{field}[{i}]")
        if problem is None and (isinstance(score, bool) or not isinstance(score, (int, float))):
            problem = DropReason("missing_field" if score is None else "malformed", f"score of {field}[{i}]")
        if problem:
            fixes.append(Fix(problem.reason, problem.field))
            continue
        kept.append(response.strip())
        kept_scores.append(float(score))
    if len(kept) < 2:
        # Only bad answers stood between this row and a pair: that is a data problem, not a filter.
        return DropReason(fixes[0].reason, fixes[0].field) if fixes and len(responses) >= 2 else DropReason("single_response", field)
    ranking = opts["ranking"]
    pairs = rank_to_pairs(prompt, kept, kept_scores, ranking["strategy"], ranking["min_margin"])
    if not pairs:
        return DropReason("tie" if len(set(kept_scores)) == 1 else "below_margin", field)
    return pairs + fixes


@converter
def convert_eli5(row: dict, opts: dict):
    """Reddit ELI5 (eli5 / eli5_category schema): title, selftext, answers {a_id, text, score} as parallel
    lists (a list of {text, score} objects is accepted too). Ranked answers become pairs."""
    prompt = text(row, "title")
    selftext = row.get("selftext")
    if isinstance(selftext, str) and selftext.strip():
        prompt += "\n\n" + selftext.strip()
    answers = get(row, "answers")
    if isinstance(answers, list):
        texts = [a.get("text") if isinstance(a, dict) else None for a in answers]
        scores = [a.get("score") if isinstance(a, dict) else None for a in answers]
    elif isinstance(answers, dict):
        texts, scores = answers.get("text"), answers.get("score")
    else:
        raise Dropped("malformed", "answers")
    return ranked(prompt, texts, scores, opts, "answers.text")


@converter
def convert_hc3(row: dict, opts: dict):
    """Hello-SimpleAI/HC3: question, human_answers [..], chatgpt_answers [..]. The lists are zipped
    (answer i with answer i); data.options.prefer says which side is chosen."""
    prompt = text(row, "question")
    sides = {}
    for side in ("human", "chatgpt"):
        answers = get(row, f"{side}_answers")
        if not isinstance(answers, list):
            raise Dropped("malformed", f"{side}_answers")
        if not answers:
            raise Dropped("empty", f"{side}_answers")
        sides[side] = answers
    other = "chatgpt" if opts["prefer"] == "human" else "human"
    out: list = []
    for i, (preferred, dispreferred) in enumerate(zip(sides[opts["prefer"]], sides[other])):
        try:
            chosen = as_text(preferred, f"{opts['prefer']}_answers[{i}]")
            rejected = as_text(dispreferred, f"{other}_answers[{i}]")
        except Dropped as dropped:
            out.append(dropped.drop)
            continue
        out.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return out


@converter
def convert_shp(row: dict, opts: dict):
    """stanfordnlp/SHP: history (the post), human_ref_A/B (two comments), labels (1: A preferred),
    score_ratio (preferred score / dispreferred score, >= 1)."""
    labels = get(row, "labels")
    if labels not in (0, 1):
        raise Dropped("malformed", f"labels={labels!r}")
    if opts["min_score_ratio"] is not None and number(row, "score_ratio") < opts["min_score_ratio"]:
        return DropReason("below_score_ratio", f"score_ratio < {opts['min_score_ratio']}")
    prompt = text(row, "history")
    a, b = text(row, "human_ref_A"), text(row, "human_ref_B")
    chosen, rejected = (a, b) if labels == 1 else (b, a)
    return [{"prompt": prompt, "chosen": chosen, "rejected": rejected}]


def response_text(value, field: str) -> str:
    """A response given as text, or as chat messages ending in the assistant's turn (TRL's format)."""
    if isinstance(value, list):
        turns = messages(value, field)
        if turns[-1]["role"] != "assistant":
            raise Dropped("malformed", f"{field}: last message is not the assistant's")
        return turns[-1]["content"]
    return as_text(value, field)


@converter
def convert_custom(row: dict, opts: dict):
    """Any table: data.columns names the prompt and either chosen/rejected or responses/scores (lists,
    ranked with data.ranking). Dotted names reach into nested fields; a prompt may be chat messages."""
    columns = opts["columns"]
    prompt_value = get(row, columns["prompt"])
    if isinstance(prompt_value, list):
        prompt = messages(prompt_value, columns["prompt"])
    else:
        prompt = as_text(prompt_value, columns["prompt"])
    if columns.get("responses"):
        return ranked(prompt, get(row, columns["responses"]), get(row, columns["scores"]), opts, columns["responses"])
    chosen = response_text(get(row, columns["chosen"]), columns["chosen"])
    rejected = response_text(get(row, columns["rejected"]), columns["rejected"])
    return [{"prompt": prompt, "chosen": chosen, "rejected": rejected}]


@converter
def convert_prompt_completion(row: dict, opts: dict):
    """SFT rows {prompt, completion} (the embedded task's SFT split, or a custom SFT split)."""
    prompt_value = get(row, "prompt")
    prompt = messages(prompt_value, "prompt") if isinstance(prompt_value, list) else as_text(prompt_value, "prompt")
    return [{"prompt": prompt, "completion": response_text(get(row, "completion"), "completion")}]
