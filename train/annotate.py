"""Labels from people: answers -> Label Studio tasks, annotations -> preference pairs.

    python -m train.annotate export answers=<answers.jsonl | a round's answers/> scheme=best_worst|rating
        guidelines=<file.md> [project=<title>] [url=<Label Studio URL>] [offline=true] [out=<import.json>]
    python -m train.annotate import project=<title> [url=...] out=<dir>
    python -m train.annotate import file=<Label Studio JSON export> [project=<title>] out=<dir>
        [strategy=best_vs_worst|best_vs_rest|all_pairs|adjacent] [min_margin=0] [partial=use|skip]

export: one task per prompt_id with its answers (train/data/annotation_tasks.py), into the project titled
`project` (default <answers file name>-<scheme>), created with the scheme's labeling interface and the guidelines
as its instructions, or reused (prompts already in it are not added again). offline=true or out=<file> writes
Label Studio's import JSON (and <file>.label_config.xml) instead of talking to a server.
import: the project's annotations (or a JSON export downloaded from it) -> <out>/train.jsonl (TRL pairs plus
scores and answer ids, for `data=custom data.source=<out>`) and <out>/report.json (counts, agreement);
train/data/annotations.py says how labels become scores and pairs.
The server is url=, else $LABEL_STUDIO_URL, else http://127.0.0.1:8089; its token only $LABEL_STUDIO_API_KEY.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from train.config.choices import RankingStrategy
from train.config.schema import RankingSpec
from train.core.cli import fail
from train.core.errors import ConfigError
from train.core.files import write_json, write_jsonl
from train.data.annotation_tasks import (Scheme, build_task, check_tasks, group_answers, label_config,
                                         read_answers, read_label_config)
from train.data.annotations import Partial, aggregate
from train.runtime.label_studio import LabelStudioServer

KEYS = {"export": {"answers", "scheme", "guidelines", "project", "url", "offline", "out"},
        "import": {"project", "file", "url", "out", "strategy", "min_margin", "partial"}}


def parse(argv: list[str]) -> tuple[str, dict[str, str]]:
    if not argv or argv[0] not in KEYS:
        raise ConfigError("say what to do: python -m train.annotate export|import key=value ... (--help shows them)")
    args = {}
    for item in argv[1:]:
        key, sep, value = item.partition("=")
        if not sep or key not in KEYS[argv[0]]:
            raise ConfigError(f"{item!r}: {argv[0]} takes {', '.join(sorted(KEYS[argv[0]]))} (key=value)")
        args[key] = value
    return argv[0], args


def choice(enum_type, args: dict, key: str, default=None):
    value = args.get(key, default)
    names = [m.value for m in enum_type]
    if value not in names:
        raise ConfigError(f"{key}={value or ''}: give {key}={'|'.join(names)}")
    return enum_type(value)


def export(args: dict) -> None:
    scheme = choice(Scheme, args, "scheme")
    for key in ("answers", "guidelines"):
        if not args.get(key):
            raise ConfigError(f"give {key}=<file> (--help shows every key)")
    guidelines = Path(args["guidelines"])
    if not guidelines.is_file():
        raise ConfigError(f"guidelines={guidelines}: no such file (write the annotators' guidelines as markdown)")
    answers = Path(args["answers"])
    groups = group_answers(read_answers(answers))
    slots = max(len(g["answers"]) for g in groups)
    title = args.get("project") or f"{answers.stem}-{scheme.value}"
    instructions = guidelines.read_text()
    if args.get("offline", "false").lower() in ("1", "true", "yes") or args.get("out"):
        out = Path(args.get("out") or answers.with_suffix(f".{scheme.value}.labelstudio.json"))
        write_json(out, [build_task(g, slots, scheme, title) for g in groups])
        config = out.with_suffix(".label_config.xml")
        config.write_text(label_config(scheme, slots) + "\n")
        print(f"annotate: wrote {len(groups)} tasks ({slots} answer slots, scheme {scheme.value}) to {out}; in Label "
              f"Studio create a project titled {title!r} with the labeling interface in {config} and the "
              f"guidelines of {guidelines} as its instructions, then import {out}")
        return
    server = LabelStudioServer(args.get("url"))
    project = server.find_project(title)
    if project is None:
        project = server.create_project(title, label_config(scheme, slots), instructions)
        print(f"annotate: created project {title!r} (id {project.id}) at {server.url}: scheme {scheme.value}, "
              f"{slots} answer slots, guidelines from {guidelines}")
    else:
        have, have_slots = read_label_config(project.label_config, title)
        if have is not scheme:
            raise ConfigError(f"project {title!r} labels by scheme {have.value}: give scheme={have.value}, "
                              "or project=<a new title>")
        if have_slots < slots:
            raise ConfigError(f"project {title!r} shows {have_slots} answers per task but {answers} has prompts "
                              f"with {slots}: export to a new project=<title>")
        slots = have_slots
        if (project.expert_instruction or "") != instructions:
            server.set_instructions(project.id, instructions)
            print(f"annotate: project {title!r}: guidelines updated from {guidelines}")
    known = {str((t.get("data") or {}).get("prompt_id")) for t in server.tasks(project.id)}
    new = [build_task(g, slots, scheme, title) for g in groups if g["prompt_id"] not in known]
    added = server.import_tasks(project.id, new)
    print(f"annotate: project {title!r} (id {project.id}): added {added} tasks, {len(groups) - len(new)} prompts "
          f"of {answers} already there; label them at {server.url}/projects/{project.id}/data")


def import_labels(args: dict) -> None:
    defaults = RankingSpec()
    strategy = choice(RankingStrategy, args, "strategy", defaults.strategy.value)
    try:
        min_margin = float(args.get("min_margin", defaults.min_margin))
    except ValueError:
        raise ConfigError(f"min_margin={args['min_margin']}: give a number (the score difference a pair needs)")
    partial = choice(Partial, args, "partial", Partial.use.value)
    if not args.get("out"):
        raise ConfigError("give out=<dir> (where train.jsonl and report.json go)")
    if not args.get("file") and not args.get("project"):
        raise ConfigError("give project=<title> (read from Label Studio) or file=<its JSON export>")
    title = args.get("project")
    if args.get("file"):
        origin = Path(args["file"])
        try:
            tasks = json.loads(origin.read_text())
        except FileNotFoundError:
            raise ConfigError(f"file={origin}: no such file (export the project as JSON in Label Studio)")
        except json.JSONDecodeError:
            raise ConfigError(f"file={origin} is not JSON: export the project as JSON in Label Studio")
    else:
        server = LabelStudioServer(args.get("url"))
        project = server.project(title)
        read_label_config(project.label_config, title)
        origin = f"project {title!r}"
        tasks = server.tasks(project.id)
    scheme = check_tasks(tasks, str(origin), title)
    if not tasks:
        raise ConfigError(f"{origin} has no tasks: export answers into it first")
    pairs, report = aggregate(tasks, scheme, strategy, min_margin, partial)
    out = Path(args["out"])
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "train.jsonl", pairs)
    write_json(out / "report.json", {"source": str(origin), **report})
    counts = report["counts"]
    print(f"annotate: {counts['tasks']} tasks, {report['annotators']} annotators: {counts.get('annotations_used', 0)} "
          f"annotations used, {counts.get('annotations_partial', 0)} partial ({partial.value}), "
          f"{counts.get('annotations_skipped', 0)} skipped, {counts.get('annotations_empty', 0)} empty, "
          f"{counts.get('annotations_invalid', 0)} invalid; {counts.get('answers_unrated', 0)} answers unrated, "
          f"{counts.get('ties_not_paired', 0)} ties not paired; agreement {json.dumps(report['agreement'])}")
    print(f"annotate: wrote {len(pairs)} pairs to {out / 'train.jsonl'} and the report to {out / 'report.json'}")
    if not pairs:
        raise ConfigError(f"no pairs from {origin}: see {out / 'report.json'} (label more tasks, or lower min_margin)")
    print(f"annotate: train on them with: python -m train data=custom data.source={out}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    try:
        command, args = parse(argv)
        export(args) if command == "export" else import_labels(args)
    except ConfigError as err:
        fail(str(err))
    return 0


if __name__ == "__main__":
    sys.exit(main())
