"""Answers -> Label Studio tasks and labeling interface, and back: the task format python -m train.annotate writes.

One task per prompt. Its data holds the prompt as shown (`prompt`, chat messages rendered one turn a paragraph)
and as given (`prompt_value`), each answer in a slot `answer_1` .. `answer_N`, and `answers`: per slot the ids
that map it back (model, sample, round). N, the number of slots of a project, is the largest number of answers
any prompt of the exported file has; a prompt with fewer answers leaves the last slots empty (NO_ANSWER), and
labels given to those slots are ignored (counted). `scheme` and `dpo_project` (the project title) mark a task as
ours, so an export file of another project is refused instead of misread.

Schemes (Scheme):
  best_worst  two single-choice blocks, `best` and `worst`, each naming one slot (Choice alias = slot number);
  rating      one 1-5 Rating per slot (`rating_1` .. `rating_N`).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from xml.etree import ElementTree

from train.config.choices import Choice
from train.core.errors import ConfigError

NO_ANSWER = "(no answer in this slot: leave it unlabeled)"
MAX_RATING = 5
ANSWER_FIELDS = ("prompt_id", "prompt", "model", "sample", "answer")


class Scheme(Choice):
    """How annotators label a task's answers."""

    best_worst = "best_worst"
    rating = "rating"


def read_answers(path: Path) -> list[dict]:
    """The rows of an answers JSONL file ({prompt_id, prompt, model, sample, answer, round}), or of every .jsonl file
    under a directory (an on-policy round's answers/: one chunk file per model and chunk), checked."""
    files = sorted(path.rglob("*.jsonl")) if path.is_dir() else [path] if path.is_file() else []
    if not files:
        raise ConfigError(f"answers={path}: no such file, or a directory without .jsonl files (give the answers "
                          "on-policy generation wrote: a round's answers/ directory or one .jsonl file)")
    rows = []
    for path, number, line in ((f, n, line) for f in files for n, line in enumerate(f.read_text().splitlines(), 1)):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(f"answers={path} line {number} is not JSON ({err.msg}): fix or remove that line")
        missing = [k for k in ANSWER_FIELDS if not isinstance(row, dict) or k not in row]
        if missing:
            raise ConfigError(f"answers={path} line {number} has no {', '.join(missing)}: each line needs "
                              f"{', '.join(ANSWER_FIELDS)} (and round)")
        rows.append(row)
    if not rows:
        raise ConfigError(f"answers={path} holds no answers")
    return rows


def group_answers(rows: list[dict]) -> list[dict]:
    """One group per prompt_id (file order): {prompt_id, prompt, answers: [row, ...]}."""
    groups: dict[str, dict] = {}
    seen = defaultdict(set)
    for row in rows:
        pid = str(row["prompt_id"])
        key = (str(row["model"]), int(row["sample"]))
        if key in seen[pid]:
            raise ConfigError(f"answers: prompt_id {pid} has model {key[0]} sample {key[1]} twice: "
                              "each (model, sample) once per prompt")
        seen[pid].add(key)
        groups.setdefault(pid, {"prompt_id": pid, "prompt": row["prompt"], "answers": []})["answers"].append(row)
    return list(groups.values())


def prompt_text(prompt) -> str:
    """A prompt as annotators read it: text as is; chat messages one `role: content` paragraph each."""
    if isinstance(prompt, list):
        return "\n\n".join(f"{m.get('role', '?')}: {m.get('content', '')}" for m in prompt)
    return str(prompt)


def build_task(group: dict, slots: int, scheme: Scheme, project: str) -> dict:
    """The task data of one prompt, its answers in slots 1..len(answers), the rest NO_ANSWER."""
    answers = group["answers"]
    data = {"prompt_id": group["prompt_id"], "prompt": prompt_text(group["prompt"]), "prompt_value": group["prompt"],
            "scheme": scheme.value, "dpo_project": project,
            "answers": [{"slot": i + 1, "model": str(a["model"]), "sample": int(a["sample"]),
                         "round": int(a.get("round", 0))} for i, a in enumerate(answers)]}
    for i in range(slots):
        data[f"answer_{i + 1}"] = str(answers[i]["answer"]) if i < len(answers) else NO_ANSWER
    return {"data": data}


def label_config(scheme: Scheme, slots: int) -> str:
    """The labeling interface of a scheme with `slots` answers per task."""
    parts = ['<View>', '  <Header value="Prompt"/>', '  <Text name="prompt" value="$prompt"/>']
    for i in range(1, slots + 1):
        parts += [f'  <Header value="Answer {i}"/>', f'  <Text name="answer_{i}" value="$answer_{i}"/>']
        if scheme is Scheme.rating:
            parts.append(f'  <Rating name="rating_{i}" toName="answer_{i}" maxRating="{MAX_RATING}"/>')
    if scheme is Scheme.best_worst:
        for name in ("best", "worst"):
            parts.append(f'  <Header value="The {name} answer"/>')
            parts.append(f'  <Choices name="{name}" toName="prompt" choice="single" showInline="true" required="true">')
            parts += [f'    <Choice value="Answer {i}" alias="{i}"/>' for i in range(1, slots + 1)]
            parts.append('  </Choices>')
    return "\n".join(parts + ['</View>'])


def canonical(xml: str) -> str:
    try:
        return ElementTree.canonicalize(xml, strip_text=True)
    except ElementTree.ParseError:
        return ""


def read_label_config(xml: str, project: str) -> tuple[Scheme, int]:
    """(scheme, slots) of an interface label_config wrote; anything else (edited by hand) is refused."""
    slots = len(re.findall(r'<Text\s+name="answer_\d+"', xml))
    scheme = Scheme.rating if "<Rating" in xml else Scheme.best_worst
    if not slots or canonical(xml) != canonical(label_config(scheme, slots)):
        raise ConfigError(f"project {project!r}: its labeling interface is not one train.annotate writes (edited "
                          "in Label Studio?): restore it, or export to a new project=<name>")
    return scheme, slots


def task_answers(task: dict) -> list[dict]:
    """The answers of an exported task, each {slot, model, sample, round, text}; refused when any is missing."""
    data = task.get("data") or {}
    meta = data.get("answers")
    where = f"task {task.get('id', '?')} (prompt_id {data.get('prompt_id', '?')})"
    if not isinstance(meta, list) or not meta:
        raise ConfigError(f"{where} has no answers in its data: its answers were deleted in Label Studio; "
                          "delete the task there, or export the answers again to a new project=<name>")
    out = []
    for item in meta:
        text = data.get(f"answer_{item.get('slot')}")
        if not isinstance(text, str) or not text.strip() or text == NO_ANSWER:
            raise ConfigError(f"{where}: answer {item.get('slot')} was deleted from its data: delete the task in "
                              "Label Studio, or export the answers again to a new project=<name>")
        out.append({**item, "text": text})
    return out


def check_tasks(tasks: list, origin: str, project: str | None) -> Scheme:
    """The scheme of exported tasks; refused when they are not train.annotate tasks (of `project`, if given)."""
    if not isinstance(tasks, list):
        raise ConfigError(f"{origin} is not a Label Studio JSON export (a list of tasks): export the project as JSON")
    foreign = [t for t in tasks if not isinstance(t, dict) or "prompt_id" not in (t.get("data") or {})
               or (t.get("data") or {}).get("scheme") not in {s.value for s in Scheme}]
    if foreign:
        raise ConfigError(f"{origin}: {len(foreign)} of {len(tasks)} tasks are not from a train.annotate export "
                          "(no prompt_id/scheme in their data): export the project that train.annotate created")
    titles = {t["data"].get("dpo_project") for t in tasks}
    schemes = {t["data"]["scheme"] for t in tasks}
    if project is not None and titles - {project}:
        raise ConfigError(f"{origin} holds tasks of project {sorted(map(str, titles))}, not {project!r}: "
                          "give the export of that project, or leave project= out")
    if len(schemes) > 1:
        raise ConfigError(f"{origin} mixes schemes {sorted(schemes)}: import one project at a time")
    return Scheme(schemes.pop()) if schemes else Scheme.rating
