"""Canaries for train/seams.py: one per private TRL/datasets/transformers/accelerate/Hydra attribute it uses,
run against the installed libraries, so an upgrade that renames, drops or reshapes one fails here in
seconds with the library's version in the message. The last test keeps every such access in
train/seams.py: it fails when another module in train/ or launch/ reaches into a library's privates.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import inspect
from pathlib import Path

import pytest

from train import seams

REPO = Path(__file__).resolve().parents[3]


def broken(distribution: str, what: str) -> str:
    """The failure message: which library, which version, what changed, where we depend on it."""
    return (f"{distribution} {importlib.metadata.version(distribution)}: {what}. train/seams.py relies on it; "
            "adapt the seam (or pin the library) before upgrading.")


# --- TRL's DPOTrainer -------------------------------------------------------------------------------------


def test_trl_precompute_ref_logps_keeps_its_signature():
    from trl import DPOTrainer

    method = getattr(DPOTrainer, "_precompute_ref_logps", None)
    assert callable(method), broken("trl", "DPOTrainer._precompute_ref_logps is gone")
    params = list(inspect.signature(method).parameters)
    assert params == ["self", "dataset", "name", "batch_size"], broken(
        "trl", f"DPOTrainer._precompute_ref_logps now takes {params}, not (self, dataset, name, batch_size)")


def test_trl_precompute_sources_still_use_the_attributes_we_read_and_write():
    """Cheap and version-specific: the names must appear where TRL 1.16 sets and reads them."""
    from trl import DPOTrainer

    init = inspect.getsource(DPOTrainer.__init__)
    precompute = inspect.getsource(DPOTrainer._precompute_ref_logps)
    for name in ("self._precompute_model_hash =", "self._precompute_engine =", "self._precompute_ref_logps("):
        assert name in init, broken("trl", f"DPOTrainer.__init__ no longer contains `{name}`")
    # Our cache key replaces the model hash and redirects the cache file: TRL must still build its
    # fingerprint from both and ask the dataset instance for the file's path.
    for name in ("self._precompute_model_hash", "dataset._fingerprint", "dataset._get_cache_file_path(",
                 "self._precompute_engine"):
        assert name in precompute, broken("trl", f"DPOTrainer._precompute_ref_logps no longer uses `{name}`")


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> str:
    """A very small Llama with the project's tokenizer and chat template, saved like a hub model."""
    from train.models.tiny import build_tiny_model

    spec = dict(vocab_size=300, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=64)
    texts = ["write a review of the film", "great wonderful film", "terrible boring plot"] * 4
    return str(build_tiny_model(tmp_path_factory.mktemp("seams") / "tiny", spec, texts, seed=0))


def test_trl_reference_pass_is_routed_through_the_hook_and_sets_the_private_attributes(tiny_model_dir, tmp_path):
    """A real DPOTrainer on the tiny model with precompute_ref_log_probs: TRL's __init__ calls the hook with
    (dataset, "train", batch_size), the redirect places TRL's cache file where we say, and the instance
    attributes exist afterwards."""
    from datasets import Dataset
    from datasets.fingerprint import Hasher
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    redirected = tmp_path / "ref-logps.arrow"
    calls = []

    class Probe(seams.ReferencePassHook, DPOTrainer):
        def reference_pass(self, compute, dataset, name, batch_size):
            calls.append((name, batch_size, seams.precompute_model_hash(self)))
            # What train/trainer/reference_cache.py does: our key replaces TRL's model hash, and the file
            # TRL names hash((dataset fingerprint, model hash)) is redirected to our path.
            seams.set_precompute_model_hash(self, "our-key")
            trl_fingerprint = Hasher.hash((seams.dataset_fingerprint(dataset), "our-key"))
            with seams.cache_file_redirected(dataset, trl_fingerprint, str(redirected)):
                return compute(dataset, name, batch_size)

    rows = {"prompt": ["write a review"] * 4, "chosen": [" great film"] * 4, "rejected": [" boring plot"] * 4}
    args = DPOConfig(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, report_to=[], max_length=32,
                     per_device_train_batch_size=2, precompute_ref_log_probs=True, gradient_checkpointing=False,
                     save_strategy="no", logging_strategy="no")
    trainer = Probe(model=tiny_model_dir, args=args, train_dataset=Dataset.from_dict(rows),
                    processing_class=AutoTokenizer.from_pretrained(tiny_model_dir))

    assert calls and calls[0][:2] == ("train", 2), broken(
        "trl", f"DPOTrainer.__init__ no longer calls _precompute_ref_logps(dataset, 'train', batch_size): {calls}")
    assert isinstance(calls[0][2], str) and calls[0][2], broken(
        "trl", f"_precompute_model_hash is {calls[0][2]!r} during the reference pass, not TRL's hash string")
    assert redirected.exists(), broken(
        "trl", "the reference pass did not write its cache file at the redirected path: TRL no longer names it "
        "dataset._get_cache_file_path(Hasher.hash((dataset._fingerprint, self._precompute_model_hash)))")
    assert "ref_chosen_logps" in trainer.train_dataset.column_names
    assert hasattr(trainer, "_precompute_engine"), broken("trl", "DPOTrainer no longer sets _precompute_engine")
    assert trainer._precompute_engine is None  # no DeepSpeed here: TRL never builds the inference engine
    assert seams.release_precompute_engine(trainer) is False


def test_release_precompute_engine_destroys_and_forgets_the_engine():
    class Engine:
        destroyed = False

        def destroy(self):
            self.destroyed = True

    class Trainer:
        pass

    trainer, engine = Trainer(), Engine()
    trainer._precompute_engine = engine
    assert seams.release_precompute_engine(trainer) is True
    assert engine.destroyed and trainer._precompute_engine is None
    assert seams.release_precompute_engine(Trainer()) is False  # an older TRL without the attribute


def test_deepspeed_engine_still_has_destroy():
    deepspeed = pytest.importorskip("deepspeed")

    assert callable(getattr(deepspeed.DeepSpeedEngine, "destroy", None)), broken(
        "deepspeed", "DeepSpeedEngine.destroy is gone (seams.release_precompute_engine calls it)")


# --- datasets ----------------------------------------------------------------------------------------------


def rows():
    from datasets import Dataset

    return Dataset.from_dict({"x": [0, 1, 2, 3]})


def test_datasets_fingerprint_is_a_string_that_names_each_transform():
    dataset = rows()
    fingerprint = seams.dataset_fingerprint(dataset)
    assert isinstance(fingerprint, str) and fingerprint, broken("datasets", f"Dataset._fingerprint is {fingerprint!r}")
    assert seams.dataset_fingerprint(dataset.select([2, 0])) != fingerprint, broken(
        "datasets", "select() keeps Dataset._fingerprint: it no longer identifies the content")
    mapped = dataset.map(lambda row: row, new_fingerprint="chosen-by-us")
    assert seams.dataset_fingerprint(mapped) == "chosen-by-us", broken(
        "datasets", "map(new_fingerprint=...) no longer sets Dataset._fingerprint")


def test_datasets_indices_are_none_when_flat_and_set_after_select_or_filter():
    dataset = rows()
    assert not seams.has_index_mapping(dataset), broken("datasets", "a flat Dataset has non-None _indices")
    for derived in (dataset.select([2, 0]), dataset.filter(lambda row: row["x"] % 2 == 0)):
        assert seams.has_index_mapping(derived), broken(
            "datasets", "select/filter no longer leave an index mapping in Dataset._indices")
        assert not seams.has_index_mapping(derived.flatten_indices())


@pytest.fixture
def disk_rows(tmp_path):
    """A Dataset backed by a file: datasets names its cache files by fingerprint only then."""
    from datasets import load_from_disk

    rows().save_to_disk(str(tmp_path / "rows"))
    return load_from_disk(str(tmp_path / "rows"))


def test_datasets_cache_file_path_takes_a_fingerprint_and_returns_a_path(disk_rows):
    get_path = getattr(disk_rows, "_get_cache_file_path", None)
    assert callable(get_path), broken("datasets", "Dataset._get_cache_file_path is gone")
    assert list(inspect.signature(get_path).parameters) == ["fingerprint"], broken(
        "datasets", f"Dataset._get_cache_file_path now takes {list(inspect.signature(get_path).parameters)}")
    path = get_path("abc123")
    assert isinstance(path, str) and Path(path).name == "cache-abc123.arrow", broken(
        "datasets", f"Dataset._get_cache_file_path('abc123') gave {path!r}, not <dir>/cache-abc123.arrow")


def test_cache_file_redirected_redirects_one_fingerprint_and_restores(disk_rows, tmp_path):
    default_other = disk_rows._get_cache_file_path("other")
    target = str(tmp_path / "ours.arrow")
    with seams.cache_file_redirected(disk_rows, "wanted", target):
        assert disk_rows._get_cache_file_path("wanted") == target
        assert disk_rows._get_cache_file_path("other") == default_other
        # datasets' own map() asks the instance too: a file written for that fingerprint lands at our path.
        disk_rows.map(lambda row: {"y": row["x"]}, new_fingerprint="wanted")
    assert Path(target).exists(), broken("datasets", "map() did not write the cache file at the redirected path")
    assert "_get_cache_file_path" not in vars(disk_rows)
    assert Path(disk_rows._get_cache_file_path("wanted")).name == "cache-wanted.arrow"


def test_cache_file_redirected_restores_after_an_error(disk_rows, tmp_path):
    with pytest.raises(RuntimeError), seams.cache_file_redirected(disk_rows, "wanted", str(tmp_path / "x.arrow")):
        raise RuntimeError
    assert "_get_cache_file_path" not in vars(disk_rows)


# --- transformers and accelerate ---------------------------------------------------------------------------


@pytest.mark.parametrize("requested", ["sdpa", "eager", None])
def test_transformers_config_records_the_attention_implementation(tiny_model_dir, requested):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=requested)
    resolved = seams.attn_implementation(model.config)
    expected = {requested} if requested else {"sdpa", "eager"}
    assert resolved in expected, broken(
        "transformers", f"config._attn_implementation is {resolved!r} for attn_implementation={requested!r}")


def test_transformers_model_classes_still_declare_their_attention_support():
    """seams.supports_attention reads the class flags transformers itself checks before it raises at load."""
    from transformers import Gemma2ForCausalLM, LlamaForCausalLM

    for cls, attn, expected in [(LlamaForCausalLM, "sdpa", True), (LlamaForCausalLM, "flash_attention_2", True),
                                (Gemma2ForCausalLM, "sdpa", False), (Gemma2ForCausalLM, "eager", True)]:
        assert seams.supports_attention(cls, attn) is expected, broken(
            "transformers", f"{cls.__name__} no longer declares {attn} support as {expected}")


def test_wandb_run_is_a_module_global_and_an_offline_run_hides_inside_the_model_card():
    import types

    import wandb
    from wandb.sdk.wandb_run import Run

    assert "run" in vars(wandb) and isinstance(inspect.getattr_static(Run, "offline"), property), broken(
        "wandb", "wandb.run is no longer a module global, or Run.offline no longer a property")
    before = wandb.run
    try:
        for offline, hidden in ((True, True), (False, False)):
            wandb.run = run = types.SimpleNamespace(offline=offline)
            with seams.offline_wandb_run_hidden():
                assert (wandb.run is None) is hidden
            assert wandb.run is run
    finally:
        wandb.run = before


def test_tqdm_keeps_its_open_bars_and_closing_them_ends_the_line(capsys):
    import sys

    from tqdm import tqdm

    bar = tqdm(total=4, file=sys.stderr, desc="pass")
    bar.update(1)
    assert bar in getattr(tqdm, "_instances", ()), broken("tqdm", "open bars are no longer in tqdm._instances")
    seams.close_progress_bars()
    print("error: next", file=sys.stderr)
    assert "error: next" in capsys.readouterr().err.splitlines()  # on a line of its own, not after the bar


def test_accelerate_reset_state_forgets_partial_and_accelerator_state():
    from accelerate.state import AcceleratorState, PartialState

    assert "reset_partial_state" in inspect.signature(AcceleratorState._reset_state).parameters, broken(
        "accelerate", "AcceleratorState._reset_state no longer takes reset_partial_state")
    PartialState(cpu=True)
    AcceleratorState(cpu=True)
    assert PartialState._shared_state and AcceleratorState._shared_state
    seams.reset_accelerate_state()
    assert PartialState._shared_state == {}, broken(
        "accelerate", "AcceleratorState._reset_state(reset_partial_state=True) left PartialState set")
    assert AcceleratorState._shared_state == {}, broken("accelerate", "AcceleratorState._reset_state left its state")


# --- Hydra -------------------------------------------------------------------------------------------------


def test_hydra_failed_job_return_keeps_its_exception_in_return_value():
    import dataclasses

    from hydra.core.utils import JobReturn, JobStatus

    assert "_return_value" in {f.name for f in dataclasses.fields(JobReturn)}, broken(
        "hydra-core", "JobReturn has no _return_value field")
    error = ValueError("boom")
    job_return = JobReturn(status=JobStatus.FAILED)
    job_return.return_value = error  # what hydra.core.utils.run_job does with a job's exception
    assert seams.job_error(job_return) is error, broken("hydra-core", "JobReturn._return_value is not the exception")
    with pytest.raises(ValueError):  # why the seam exists: the public property re-raises
        job_return.return_value


# --- the rule: private library attributes only in train/seams.py ------------------------------------------

# Private names of the standard library that are documented API.
STDLIB_PRIVATE = {("os", "_exit")}
ACCESSORS = {"getattr", "setattr", "hasattr", "delattr"}


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


@functools.cache
def project_modules() -> dict[Path, ast.Module]:
    files = sorted((REPO / "train").rglob("*.py")) + sorted((REPO / "launch").rglob("*.py"))
    return {path: ast.parse(path.read_text(), str(path)) for path in files}


def defined_private_names(tree: ast.Module) -> set[str]:
    """Private names our own code defines: functions and methods, class attributes, `self._x = ...`."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and \
                isinstance(node.value, ast.Name) and node.value.id == "self":
            names.add(node.attr)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return {name for name in names if is_private(name)}


def private_accesses(tree: ast.Module) -> list[tuple[int, str, str]]:
    """(line, name, how) for every private attribute touched: `x._name`, getattr(x, "_name"), a private import."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_private(node.attr):
            owner = node.value.id if isinstance(node.value, ast.Name) else None
            if (owner, node.attr) not in STDLIB_PRIVATE:
                found.append((node.lineno, node.attr, f"{owner or '<expr>'}.{node.attr}"))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ACCESSORS \
                and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) \
                and isinstance(node.args[1].value, str) and is_private(node.args[1].value):
            found.append((node.lineno, node.args[1].value, f"{node.func.id}(..., {node.args[1].value!r})"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] not in ("train", "launch"):
            parts = node.module.split(".") + [alias.name for alias in node.names]
            found += [(node.lineno, part, f"from {node.module} import ...") for part in parts if is_private(part)]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, part, f"import {alias.name}") for alias in node.names
                      for part in alias.name.split(".") if is_private(part) and alias.name.split(".")[0] != "train"]
    return found


def seam_violations(modules: dict[Path, ast.Module]) -> list[str]:
    seams_path = REPO / "train" / "seams.py"
    # The library privates the seam touches are never "ours", even where a subclass also sets one (self._x = ...).
    seam = modules[seams_path]
    library = {name for _, name, _ in private_accesses(seam)} | defined_private_names(seam)
    ours = set().union(*(defined_private_names(tree) for path, tree in modules.items() if path != seams_path)) - library
    violations = []
    for path, tree in modules.items():
        if path == seams_path:
            continue
        for line, name, how in private_accesses(tree):
            if name not in ours:
                violations.append(f"{path.relative_to(REPO)}:{line}: {how}")
        for node in ast.walk(tree):  # overriding a library's private method is a seam too
            if isinstance(node, ast.ClassDef):
                violations += [f"{path.relative_to(REPO)}:{item.lineno}: def {item.name} (overrides a library private)"
                               for item in node.body if isinstance(item, ast.FunctionDef) and item.name in library]
    return violations


def test_private_library_attributes_are_used_only_in_train_seams():
    violations = seam_violations(dict(project_modules()))
    assert not violations, ("private library attributes used outside train/seams.py (add an accessor there, with "
                            "a comment and a canary in tests/test_seams.py):\n  " + "\n  ".join(violations))


@pytest.mark.parametrize("code", [
    "def key(dataset):\n    return dataset._fingerprint\n",
    "def key(trainer):\n    return getattr(trainer, '_precompute_model_hash')\n",
    "class T:\n    def f(self):\n        self._precompute_engine = None\n",
    "class T:\n    def _precompute_ref_logps(self, dataset, name, batch_size):\n        pass\n",
    "def f(model):\n    return model.config._name_or_path\n",
    "from transformers.utils import _private_helper\n",
])
def test_the_seam_rule_catches_a_new_private_access(code):
    modules = dict(project_modules())
    modules[REPO / "train" / "pipeline" / "new_module.py"] = ast.parse(code)
    assert any("new_module.py" in v for v in seam_violations(modules)), code


# --- TRL's DPO loss, as beta=adaptive relies on it (train/trainer/adaptive_beta.py MarginProbe) --------


def test_trl_dpo_loss_calls_the_policy_once_before_reading_beta():
    """beta=adaptive hands TRL's loss a probe in place of the policy and sets `trainer.beta` when the probe's
    forward returns: TRL must call the `model` it is given exactly once, read `.log_probs`, and read
    `self.beta` only after that call; the reference log-probs come from the batch when precompute_ref_logps."""
    from trl import DPOTrainer

    source = inspect.getsource(DPOTrainer._compute_loss)
    call = "outputs = model(**model_kwargs, labels=labels, fused_lm_head=True)"  # the other: return_outputs only
    policy_call = source.find(call)
    assert source.count(call) == 1 and policy_call != -1, broken("trl", "the DPO loss's policy call changed")
    assert -1 < source.find("self.beta") and policy_call < source.find("self.beta"), broken(
        "trl", "the DPO loss reads self.beta before the policy forward")
    assert "outputs.log_probs[:, -seq_len:]" in source, broken("trl", "the DPO loss's per-token log-probs moved")
    gate = source.find("if self.precompute_ref_logps:")
    assert -1 < gate < source.find('inputs["ref_chosen_logps"]'), broken(
        "trl", "the DPO loss no longer reads precomputed reference log-probs from the batch")


# --- TRL's fused LM head, which train/trainer/logps.py wraps for dpo.batching ----------------------


def test_trl_dpo_forwards_still_go_through_the_fused_head_with_the_inputs_we_lay_out():
    """The layouts replace `model(input_ids, attention_mask, use_cache, labels, fused_lm_head=True)` and hand back
    TRL's per-token fields: TRL's loss and its reference pass must still call it so, and ask for the same fields."""
    from trl import DPOTrainer
    from trl.trainer.utils import FusedCausalLMOutput

    from train.trainer import logps

    for method in (DPOTrainer._compute_loss, DPOTrainer.compute_ref_log_probs):
        source = inspect.getsource(method)
        for needed in ("fused_lm_head=True", "labels=labels", 'model_kwargs["use_cache"] = False',
                       '"completion_mask", "ref_chosen_logps", "ref_rejected_logps"'):
            assert needed in source, broken("trl", f"DPOTrainer.{method.__name__} no longer contains `{needed}`")
    init = inspect.getsource(DPOTrainer.__init__)
    asked = "outputs = (" + ", ".join(f'"{name}"' for name in logps.POLICY_OUTPUTS) + ")"
    assert asked in init, broken("trl", f"DPOTrainer.__init__ no longer sets `{asked}` for its fused head")
    fields = [f for f in FusedCausalLMOutput.__dataclass_fields__ if f not in ("loss", "label_mask", "aux_loss")]
    assert fields == ["log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1"], broken(
        "trl", f"FusedCausalLMOutput's per-token fields are now {fields}")


def test_torch_fake_tensors_and_mem_tracker_still_trace_a_step():
    """tests/helpers/memory_trace.py: a fake-tensor step attributed by MemTracker."""
    import torch
    from helpers.memory_trace import fake_tensor_mode, memory_tracker

    with fake_tensor_mode():
        layer = torch.nn.Linear(64, 64)
        optimizer = torch.optim.AdamW(layer.parameters())
        tracker = memory_tracker()
        tracker.track_external(layer, optimizer)
        with tracker:
            layer(torch.randn(8, 64)).sum().backward()
            optimizer.step()
        (peak,) = tracker.get_tracker_snapshot("peak").values()
    assert isinstance(peak, dict) and peak  # bytes by category: parameters, gradients, optimizer states, ...
