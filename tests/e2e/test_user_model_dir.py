"""A model directory the user owns is never written: `model.name_or_path=<their model>` under the default
model=tiny used to build the toy model INTO it (config, weights and tokenizer replaced, exit 0). And the way to
train a model of one's own: a one-file model group (conf/model/mine.yaml, or a directory on hydra.searchpath)."""

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.runs import REPO
from train.config.compose import compose
from train.core.errors import ConfigError
from train.data import synthetic
from train.main import precheck
from train.models.tiny import OWNER_MARKER, SPEC_MARKER, build_tiny_model

SPEC = dict(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            max_position_embeddings=64)


@pytest.fixture(scope="module")
def user_model(tmp_path_factory) -> Path:
    """A real (tiny) Qwen2 model with its tokenizer and a ChatML template, saved as a user's model directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    from train.models.loading import CHAT_TEMPLATES

    path = tmp_path_factory.mktemp("users") / "my-qwen"
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tok.train_from_iterator(synthetic.corpus(0, n=200), trainer=trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        chat_template=CHAT_TEMPLATES["chatml"])
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256)
    Qwen2ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def hashes(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*"))
            if p.is_file()}


def test_the_start_refuses_a_users_model_under_model_tiny(user_model, tmp_path, capsys):
    before = hashes(user_model)
    with pytest.raises(SystemExit) as exit_:
        precheck([f"model.name_or_path={user_model}", f"output_root={tmp_path}"])
    assert exit_.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (f"error: model.name_or_path={user_model} holds a model this project did not build, but model=tiny "
                    f"builds its toy model there (nothing was written); to train it, write conf/model/mine.yaml "
                    f"(name_or_path: {user_model}, see conf/model/qwen2_5_0_5b.yaml) and run model=mine "
                    f"recipe=real_model")
    assert hashes(user_model) == before


def test_the_build_itself_never_writes_into_a_directory_it_did_not_create(user_model, tmp_path):
    """The guard under the start check: prepare, the launch tools and any other caller build through here."""
    before = hashes(user_model)
    with pytest.raises(ConfigError, match="holds a model this project did not build"):
        build_tiny_model(user_model, SPEC, synthetic.corpus(0, n=50), seed=0)
    assert hashes(user_model) == before
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine")
    with pytest.raises(ConfigError, match="holds files this project did not write.*model.name_or_path=<dir>"):
        build_tiny_model(notes, SPEC, synthetic.corpus(0, n=50), seed=0)
    assert [p.name for p in notes.iterdir()] == ["todo.txt"]


def test_the_tiny_model_is_built_in_a_new_or_empty_directory_and_rebuilt_in_its_own(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    build_tiny_model(empty, SPEC, synthetic.corpus(0, n=50), seed=0)
    assert (empty / OWNER_MARKER).is_file() and (empty / SPEC_MARKER).is_file()
    # Ours: a changed spec rebuilds it in place, also after a build cut short (no spec marker yet).
    (empty / SPEC_MARKER).unlink()
    build_tiny_model(empty, {**SPEC, "hidden_size": 64}, synthetic.corpus(0, n=50), seed=0)
    assert '"hidden_size": 64' in (empty / SPEC_MARKER).read_text()
    build_tiny_model(tmp_path / "new" / "tiny", SPEC, synthetic.corpus(0, n=50), seed=0)
    assert (tmp_path / "new" / "tiny" / "config.json").is_file()


def test_the_command_refuses_a_users_model_in_one_line(user_model, tmp_path):
    before = hashes(user_model)
    proc = subprocess.run([sys.executable, "-m", "train", f"output_root={tmp_path}",
                           f"model.name_or_path={user_model}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-3000:]
    assert "holds a model this project did not build" in errors[0] and "model=mine" in errors[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert hashes(user_model) == before


def one_file_group(root: Path, user_model: Path) -> Path:
    """What docs tell a user to write: a model group of one file, on hydra.searchpath (or in conf/model/)."""
    (root / "model").mkdir(parents=True)
    (root / "model" / "mine.yaml").write_text(f"name_or_path: {user_model}\ndtype: float32\n")
    return root


def test_a_one_file_model_group_passes_the_start_checks(user_model, tmp_path):
    conf = one_file_group(tmp_path / "conf", user_model)
    argv = [f"hydra.searchpath=[file://{conf}]", "model=mine", "recipe=real_model", f"output_root={tmp_path}"]
    assert precheck(argv) == argv
    cfg = compose(argv)
    assert cfg.model.name_or_path == str(user_model) and cfg.model.tiny is None
    assert cfg.dpo.args.learning_rate == 5e-7  # the real-model recipe's settings, not the toy model's


@pytest.mark.slow
def test_a_one_file_model_group_runs(user_model, tmp_path):
    """A dry run builds data, tokenizer, model and both trainers' configs from the user's directory."""
    before = hashes(user_model)
    conf = one_file_group(tmp_path / "conf", user_model)
    proc = subprocess.run([sys.executable, "-m", "train", f"hydra.searchpath=[file://{conf}]", "model=mine",
                           "recipe=real_model", "debug=fast", "dry_run=true", f"output_root={tmp_path / 'out'}"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f'"model": "{user_model}"' in proc.stdout
    assert hashes(user_model) == before
