"""train.prepare is an inspection tool: it writes every converted pair (train and held-out, each
file named), never needs a test split, and a single local file is the training split whatever the source's
hub split names are."""

import json
import subprocess
import sys

from helpers.runs import REPO

FIXTURES = REPO / "tests" / "fixtures"


def prepare(tmp_path, *overrides):
    out = tmp_path / "pairs.jsonl"
    proc = subprocess.run([sys.executable, "-m", "train.prepare", f"output_root={tmp_path / 'outputs'}", *overrides,
                           f"out={out}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    return proc, out


def test_every_pair_is_written_even_from_a_source_too_small_to_hold_out(tmp_path):
    source = tmp_path / "one_prompt.jsonl"
    source.write_text(json.dumps({"prompt": "p", "chosen": "good", "rejected": "bad"}) + "\n")
    proc, out = prepare(tmp_path, "data=custom", f"data.source={source}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"wrote 1 train pairs to {out} and 0 held-out pairs to {out.with_suffix('.test.jsonl')}" in proc.stdout
    assert out.with_suffix(".test.jsonl").read_text() == ""


def test_a_single_local_file_is_the_training_split_whatever_the_hub_calls_it(tmp_path):
    # ultrafeedback_binarized trains on its hub split `train_prefs`; a downloaded file of it is just a file.
    proc, out = prepare(tmp_path, "data=ultrafeedback_binarized", "data.max_drop_fraction=0.9",
                        f"data.source={FIXTURES / 'ultrafeedback_binarized' / 'train_prefs.jsonl'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    train = out.read_text().splitlines()
    test = out.with_suffix(".test.jsonl").read_text().splitlines()
    assert len(train) >= 1 and len(test) >= 1 and "held out" in json.loads(out.with_suffix(".report.json").read_text())["test_split"]
