"""Bad input that used to end in a library traceback: one line that says what to change."""

import shutil

import pytest

from helpers.runs import read_results, run_train
from train.config.compose import compose
from train.core.errors import ConfigError
from train.data import prepare
from train.models.loading import ensure_base_model, load_tokenizer
from helpers.typed import typed


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input")
    return root, ensure_base_model(typed(compose([f"output_root={root}"])).model)


@pytest.mark.parametrize("content,message", [
    (b'{"prompt": "a", "chosen": "b\xff\xfe", "rejected": "c"}\n', "not UTF-8 text"),
    (b"", "is empty; remove it or point data.source at the data"),
])
def test_unreadable_data_files_are_one_line(content, message, tiny_dir, tmp_path):
    root, model = tiny_dir
    source = tmp_path / "pairs.jsonl"
    source.write_bytes(content)
    cfg = compose(["data=custom", f"data.source={source}", f"output_root={root}"])
    with pytest.raises(ConfigError, match=message) as err:
        prepare(typed(cfg), load_tokenizer(cfg.model, model, cfg.data.conversational))
    assert str(source) in str(err.value) and "\n" not in str(err.value)


def test_a_model_directory_without_its_tokenizer_is_named(tiny_dir, tmp_path):
    root, model = tiny_dir
    weights_only = tmp_path / "model"
    weights_only.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(f"{model}/{name}", weights_only / name)
    cfg = compose([f"model.name_or_path={weights_only}", "model.tiny=null", f"output_root={root}"])
    with pytest.raises(ConfigError, match=f"model {weights_only} has no tokenizer files"):
        load_tokenizer(cfg.model, str(weights_only), cfg.data.conversational)


@pytest.mark.slow
def test_deepspeed_on_one_process_without_a_launcher_runs(tmp_path):
    """ZeRO on one process (ZeRO-Offload on one GPU) needs a process group: the run makes a 1-process one."""
    extensions = tmp_path / "torch_extensions"  # where DeepSpeed would JIT-compile its ops
    proc = run_train("debug=fast", "sft.enabled=false", "eval.enabled=false", "deepspeed=zero2", "data.synthetic.num_pairs=64",
                     "+dpo.args.max_steps=2", output_root=tmp_path,
                     env={"WORLD_SIZE": None, "RANK": None, "TORCH_EXTENSIONS_DIR": str(extensions)})
    results = read_results(proc)
    assert (results["distributed"]["zero_stage"], results["distributed"]["world_size"], results["dpo"]["steps"]) == (2, 1, 2)
    assert not list(extensions.rglob("*.so")), "DeepSpeed compiled an op on CPU (its shm comm op serves inference only)"


@pytest.mark.parametrize("nproc,message", [("abc", "NPROC=abc: give a whole number"), ("0", "NPROC=0: must be >= 1"),
                                           ("999", "NPROC=999 but this machine has")])
def test_a_bad_process_count_is_one_line(nproc, message):
    import subprocess
    import sys

    from helpers.runs import REPO

    proc = subprocess.run([sys.executable, "launch/check_nproc.py", nproc], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith(f"error: {message}") and "Traceback" not in proc.stderr
