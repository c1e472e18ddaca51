"""The run hands each function the typed part of the config it reads (train/config/schema.py's dataclasses, from the
start plan), not the composed DictConfig: a DictConfig parameter under the run's packages is one of the entry points
or start checks below, each with the reason it takes the composed config."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("train/pipeline", "train/trainer", "train/models", "train/data", "train/memory")
START_CHECK = "start check: runs on the composed config before it is converted (its errors are the one-line ones)"
ALLOWED = {
    "train/pipeline/run.py:run": "entry point: Hydra's job hands over the composed config; the plan converts it",
    "train/pipeline/checks.py:check_config": START_CHECK,
    "train/pipeline/checks.py:start_plan": "keyed by the composed config's content (a multirun checks each once)",
    "train/pipeline/checks.py:content_key": "that key: the composed config as resolved YAML",
    "train/trainer/beta.py:BetaSchedule.from_config": START_CHECK,
    "train/trainer/beta.py:schedule": START_CHECK,
    "train/trainer/beta.py:check": START_CHECK,
    "train/trainer/layouts.py:check": START_CHECK,
    "train/models/labelers.py:check_config": START_CHECK,
    "train/models/adapters.py:check_lora_settings": START_CHECK,
    "train/models/judges.py:check_config": START_CHECK,
    "train/models/loading.py:check_model_directory": START_CHECK,
    "train/models/loading.py:check_attention": START_CHECK,
    "train/data/preference.py:check_config": START_CHECK,
    "train/memory/gate.py:check_memory_plan": START_CHECK,
    "train/memory/gate.py:memory_gate": START_CHECK + "; also train.plan's, which composes without running a job",
    "train/memory/gate.py:eval_problem": START_CHECK,
    "train/memory/gate.py:memory_problem": START_CHECK,
    "train/memory/candidates.py:zero_option": "train.plan and the memory gate (start check): the composed config",
    "train/memory/candidates.py:setting_from_config": "train.plan and the memory gate (start check)",
    "train/memory/candidates.py:overrides": "train.plan: the composed dpo.args, as command-line overrides",
    "train/memory/candidates.py:candidates": "train.plan: the composed dpo.args",
    "train/memory/candidates.py:eval_memory": "train.plan and the memory gate (start check)",
    "train/memory/architecture.py:from_model_config": "train.plan and the memory gate (start check)",
    "train/data/prompts.py:as_spec": "a prompt source spec normalized into a DictConfig of its own, not the run's",
    "train/data/prompts.py:load_sources": "that prompt source spec (as_spec)",
    "train/data/prompts.py:pick": "that prompt source spec (as_spec)",
    "train/data/prompts.py:fill_template": "that prompt source spec (as_spec)",
    "train/data/prompts.py:query_prompts": "that prompt source spec (as_spec)",
}


def dictconfig_functions() -> set[str]:
    """module:function (methods as Class.method) whose parameters or return are annotated with DictConfig."""
    found = set()
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            tree = ast.parse(path.read_text())
            for parent in ast.walk(tree):
                for node in ast.iter_child_nodes(parent):
                    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        continue
                    args = node.args
                    annotations = [a.annotation for a in (*args.posonlyargs, *args.args, *args.kwonlyargs,
                                                          args.vararg, args.kwarg) if a is not None]
                    if any(a is not None and "DictConfig" in ast.unparse(a) for a in [*annotations, node.returns]):
                        name = f"{parent.name}.{node.name}" if isinstance(parent, ast.ClassDef) else node.name
                        found.add(f"{path.relative_to(REPO)}:{name}")
    return found


def test_only_entry_points_and_start_checks_take_the_composed_config():
    unexpected = sorted(dictconfig_functions() - set(ALLOWED))
    assert not unexpected, ("these take the composed DictConfig; hand them the typed part of the config they read "
                            f"(plan.config, train/config/schema.py): {unexpected}")


def test_every_listed_exception_still_exists():
    assert not sorted(set(ALLOWED) - dictconfig_functions()), "remove these from ALLOWED: they no longer take one"
