"""Trust nothing on disk, the cache half: a reference-cache entry changed in place is recomputed,
a copied output root (or data source) keeps its caches and resumes, and partial files of interrupted writes
are removed on the next run, never one a live process is writing.

Tiers: the sweep, the checksum and the cache keys on toy files (seconds); real runs (slow): a changed
reference-cache entry, and a preempted run whose output root is copied elsewhere and resumed there.
"""

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers.runs import REPO, assert_same_run, read_results, run_train
from train.config.compose import compose
from train.core.files import COMPLETE, PID_GRACE_S, STALE_S, remove_orphans
from train.data.preference import cache_key, trainer_lengths
from train.models.loading import ensure_base_model
from train.pipeline.sft import sft_output_dir
from train.trainer.reference_cache import LOGP_COLUMNS, ReferenceLogpsCache
from helpers.typed import typed

FAST = ("debug=fast", "sft.enabled=false", "eval.enabled=false", "data.synthetic.num_pairs=128", "+dpo.args.max_steps=4",
        "dpo.args.logging_steps=1",
        "dpo.args.warmup_steps=0", "dpo.reference=precomputed")
KEY, TOKEN = "0123456789abcdef0123", "89abcdef"  # the shapes of a reference-cache key and a run's token


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def plant(path: Path, age_s: float = 0.0, text: str = "partial") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text(text)
    stamp = time.time() - age_s
    os.utime(path, (stamp, stamp))
    return path


def plant_dir(path: Path, age_s: float) -> Path:
    plant(path / "model.safetensors", age_s)
    stamp = time.time() - age_s
    os.utime(path, (stamp, stamp))
    return path


def hold(lock: Path, how: int = fcntl.LOCK_SH) -> int:
    """A lock held as a live writer holds it (a descriptor of this process; flock conflicts across descriptors)."""
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, how)
    return fd


def test_sweep_removes_what_dead_writers_left_and_keeps_what_live_ones_write(tmp_path, capsys):
    old, ancient = PID_GRACE_S + 60, STALE_S + 60
    gone = {
        "dead pid": plant(tmp_path / f"report.json.{dead_pid()}.tmp", old),
        "stale arrow partial": plant(tmp_path / f"{KEY}.{TOKEN}.arrow", ancient),
        "datasets' temp file": plant(tmp_path / "tmpab12_x9z", ancient),
        "unheld stale lock": plant(tmp_path / "synthetic-abc.lock", ancient, ""),
        "unclaimed stale dir": plant_dir(tmp_path / "aaaaaaaaaaaa.tmp", ancient),
        "dir whose claim is unheld": plant_dir(tmp_path / "bbbbbbbbbbbb.tmp", 0),
        "nested dead pid": plant(tmp_path / "prepared" / "x" / f"train_pairs.jsonl.{dead_pid()}.tmp", old),
    }
    plant(tmp_path / "bbbbbbbbbbbb.tmp.lock", 0, "")
    plant(tmp_path / "dddddddddddd.tmp.lock", 0, "")  # unheld: only the checkpoint keeps that directory
    kept = {
        "live pid": plant(tmp_path / f"results.json.{os.getpid()}.tmp", ancient),
        # a dead pid here may be a live one on another node of a shared file system: not before the grace
        "dead pid, just written": plant(tmp_path / f"meta.json.{dead_pid()}.tmp", 0),
        "fresh arrow partial (a concurrent job's pass)": plant(tmp_path / f"{KEY[::-1]}.{TOKEN}.arrow", 0),
        "finished entry": plant(tmp_path / f"{KEY}.arrow", ancient),
        "its metadata": plant(tmp_path / f"{KEY}.json", ancient),
        "held stale lock": plant(tmp_path / "held.lock", ancient, ""),
        "claimed dir, unchanged for hours (a long SFT)": plant_dir(tmp_path / "cccccccccccc.tmp", ancient),
        "resumable dir (a complete checkpoint)": plant(tmp_path / "dddddddddddd.tmp" / "checkpoint-4" / COMPLETE, ancient),
        "fresh unclaimed dir": plant_dir(tmp_path / "eeeeeeeeeeee.tmp", 0),
        "file of another kind": plant(tmp_path / "notes.tmp.txt", ancient),
    }
    held = [hold(tmp_path / "held.lock"), hold(tmp_path / "cccccccccccc.tmp.lock")]
    try:
        assert remove_orphans(tmp_path, depth=3) == len(gone)
        assert [name for name, path in gone.items() if path.exists()] == []
        assert not (tmp_path / "bbbbbbbbbbbb.tmp.lock").exists()  # removed with its directory
        assert [name for name, path in kept.items() if not path.exists()] == []
        assert capsys.readouterr().out.count(f"orphans: removed {len(gone)} partial file(s)") == 1
        assert remove_orphans(tmp_path, depth=3) == 0 and capsys.readouterr().out == ""  # says nothing when clean
    finally:
        for fd in held:
            os.close(fd)
    # Their holders gone (the OS drops a dead process's locks the same way), the lock and the directory go too.
    assert remove_orphans(tmp_path, depth=3) == 2
    assert not kept["held stale lock"].exists() and not kept["claimed dir, unchanged for hours (a long SFT)"].exists()


def test_a_claimed_temp_dir_survives_other_sweeps_until_its_process_dies(tmp_path):
    """The SFT stage claims its temp directory for the life of the process (released by the OS when it dies)."""
    work = tmp_path / "ffffffffffff.tmp"
    code = ("import sys, time; from pathlib import Path; from train.core.files import remove_orphans; "
            "remove_orphans(Path(sys.argv[1]).parent, claim=Path(sys.argv[1])); print('claimed', flush=True); time.sleep(60)")
    writer = subprocess.Popen([sys.executable, "-c", code, str(work)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "claimed"
        plant_dir(work, STALE_S + 60)
        assert remove_orphans(tmp_path) == 0 and work.exists()
    finally:
        writer.kill()
        writer.wait()
    assert remove_orphans(tmp_path) == 1 and not work.exists()


def write_logps(path: Path, rows: int) -> None:
    from datasets import Dataset

    data = {"ref_chosen_logps": [-1.5 * i for i in range(rows)], "ref_rejected_logps": [-2.5 * i for i in range(rows)]}
    Dataset.from_dict(data).map(lambda b: b, batched=True, cache_file_name=str(path))


def change_logps_in_place(arrow: Path, delta: float = 5.0) -> None:
    """Add `delta` to every chosen log-prob inside the file, same size: it still opens, with wrong numbers."""
    from datasets import Dataset

    values = np.asarray(Dataset.from_file(str(arrow)).with_format("numpy")["ref_chosen_logps"])  # as stored
    data = arrow.read_bytes()
    start = data.index(values.tobytes())
    with open(arrow, "r+b") as f:
        f.seek(start)
        f.write((values + values.dtype.type(delta)).tobytes())
    assert arrow.stat().st_size == len(data)


def test_lookup_recomputes_an_entry_changed_in_place(tmp_path, capsys):
    cache, parts = ReferenceLogpsCache(tmp_path), {"data": {"rows": 4}, "settings": {}}
    write_logps(cache.arrow_path(KEY), 4)
    cache.commit(KEY, parts, seconds=1.0)
    assert json.loads(cache.meta_path(KEY).read_text())["sha256"]
    assert cache.lookup(KEY, parts) == cache.arrow_path(KEY)
    change_logps_in_place(cache.arrow_path(KEY))
    assert cache.lookup(KEY, parts) is None
    assert f"reference log-probs: {cache.arrow_path(KEY)} fails its checksum; recomputing" in capsys.readouterr().out
    meta = json.loads(cache.meta_path(KEY).read_text())
    del meta["sha256"]  # an entry written before checksums: cannot be verified, so not trusted
    cache.meta_path(KEY).write_text(json.dumps(meta))
    assert cache.lookup(KEY, parts) is None


def test_a_copied_data_source_keeps_its_cache_key_and_a_changed_one_does_not(tmp_path):
    original = tmp_path / "a" / "all.jsonl"
    original.parent.mkdir()
    shutil.copyfile(REPO / "tests/fixtures/hc3/all.jsonl", original)  # a new mtime too, as `cp` gives

    def key(source: Path) -> str:
        cfg = compose(["data=hc3", f"data.source={source}", f"output_root={tmp_path / 'out'}"])
        return cache_key(typed(cfg), None, trainer_lengths(typed(cfg)))

    copied = tmp_path / "b" / "elsewhere.jsonl"
    copied.parent.mkdir()
    shutil.copyfile(original, copied)
    assert key(copied) == key(original)
    with open(copied, "r+b") as f:  # one byte changed in place, same size
        f.seek(10)
        byte = f.read(1)
        f.seek(10)
        f.write(b"X" if byte != b"X" else b"Y")
    assert key(copied) != key(original)


def test_a_moved_output_root_finds_its_sft_model(tmp_path):
    """The SFT key holds the tiny model by content, not by its path under the output root."""
    before = compose([f"output_root={tmp_path / 'a'}"])
    ensure_base_model(typed(before).model)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    after = compose([f"output_root={tmp_path / 'b'}"])
    assert sft_output_dir(typed(after)) == tmp_path / "b" / "sft" / sft_output_dir(typed(before)).name
    weights = tmp_path / "b" / "models" / "tiny-llama" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # other weights: another SFT
    weights.write_bytes(bytes(data))
    assert sft_output_dir(typed(after)).name != sft_output_dir(typed(before)).name


@pytest.mark.slow
def test_a_reference_cache_entry_changed_in_place_is_recomputed(tmp_path):
    """The next run of a sweep (another beta) finds the entry's log-probs changed in place: it says so,
    recomputes, and trains exactly as a run that never saw the changed file (or the damaged JSON files)."""
    root = tmp_path / "sweep"
    run_train(*FAST, output_root=root)
    (train_entry,) = [root / "ref_cache" / f"{m.stem}.arrow" for m in (root / "ref_cache").glob("*.json")
                      if json.loads(m.read_text()).get("rows") == 128]
    original = logps(train_entry)
    change_logps_in_place(train_entry)
    assert logps(train_entry) != original
    # Derived JSON files cut short on the way (a full disk, a copy interrupted) are rebuilt, not a traceback: the
    # tiny model's build marker, the prepared data's report, the memo of the weights' hash.
    damaged = [root / "models" / "tiny-llama" / "tiny_spec.json", *root.glob("data/prepared/*/report.json"),
               *(root / "ref_cache").glob("weights-*.json")]
    assert len(damaged) == 3
    for path in damaged:
        path.write_text(path.read_text()[:10])
    rerun = run_train(*FAST, "beta.value=0.3", output_root=root)
    assert f"reference log-probs: {train_entry} fails its checksum; recomputing" in rerun.stdout
    assert "reference log-probs: computed train" in rerun.stdout
    recomputed = logps(train_entry)
    for column in LOGP_COLUMNS:  # recomputed: the same numbers as before the change
        assert_same_run(recomputed[column], original[column])
    clean = run_train(*FAST, "beta.value=0.3", output_root=tmp_path / "clean")
    got, want = training(read_results(rerun)), training(read_results(clean))
    assert [e.keys() for e in got] == [e.keys() for e in want]
    for key in want[0]:
        values = [e[key] for e in want]
        if all(isinstance(v, (int, float)) for v in values):
            assert_same_run([e[key] for e in got], values)
        else:
            assert [e[key] for e in got] == values, key


def logps(arrow: Path) -> dict[str, list[float]]:
    from datasets import Dataset

    table = Dataset.from_file(str(arrow))  # memory-mapped: copied out, or a later change shows through
    return {column: [float(x) for x in table[column]] for column in LOGP_COLUMNS}


def training(results: dict) -> list[dict]:
    """Each logged step without its timings: what a run computed."""
    return [{k: v for k, v in e.items() if not k.startswith("throughput/")} for e in results["dpo"]["history"]]


# SFT on (one step) so that the copy must also find its SFT model; checkpoints every 2 DPO steps.
RESUMABLE = ("debug=fast", "eval.enabled=false", "+sft.args.max_steps=1", "+dpo.args.max_steps=4",
             "checkpoint.every_steps=2", "dpo.args.logging_steps=1", "dpo.args.warmup_steps=0")


@pytest.fixture(scope="module")
def copied(tmp_path_factory):
    """A run preempted after its step-2 checkpoint, with orphans planted in its SFT directory first; then
    its whole output root copied elsewhere and the same run started there."""
    first, second = tmp_path_factory.mktemp("first"), tmp_path_factory.mktemp("moved") / "root"
    sft = first / "sft"
    planted = {
        "stale": plant_dir(sft / "aaaaaaaaaaaa.tmp", STALE_S + 60),
        "claimed": plant_dir(sft / "bbbbbbbbbbbb.tmp", STALE_S + 60),
        "dead pid": plant(sft / f"sha256-x.json.{dead_pid()}.tmp", PID_GRACE_S + 60),
        "live pid": plant(sft / f"sha256-y.json.{os.getpid()}.tmp", PID_GRACE_S + 60),
    }
    fd = hold(sft / "bbbbbbbbbbbb.tmp.lock")  # a concurrent job writing that SFT model
    try:
        stopped = run_train(*RESUMABLE, output_root=first, check=False, env={"DPO_FAULT_INJECT": "sigterm:2"})
        survivors = {name for name, path in planted.items() if path.exists()}
    finally:
        os.close(fd)
    shutil.copytree(first, second, symlinks=True)
    prepared = sorted(p.name for p in (second / "data" / "prepared").iterdir())
    resumed = run_train(*RESUMABLE, output_root=second)
    return stopped, survivors, resumed, second, prepared


@pytest.mark.slow
def test_a_copied_output_root_resumes_with_its_caches(copied):
    stopped, _, resumed, root, prepared = copied
    assert stopped.returncode == 75 and "preempted: checkpoint at step 2 complete" in stopped.stdout
    assert "cannot resume" not in resumed.stderr
    (line,) = [x for x in resumed.stdout.splitlines() if x.startswith("resume: continuing from ")]
    assert line.endswith("checkpoint-2") and str(root) in line
    results = read_results(resumed)
    assert results["dpo"]["steps"] == 4 and [e["step"] for e in results["dpo"]["history"]] == [1, 2, 3, 4]
    # Every cache of the copy is found: the SFT model, the prepared data, the reference log-probs.
    assert "sft: reusing" in resumed.stdout and results["sft"]["reused"]
    assert sorted(p.name for p in (root / "data" / "prepared").iterdir()) == prepared
    assert "reference log-probs: reusing" in resumed.stdout and "reference log-probs: computed" not in resumed.stdout


@pytest.mark.slow
def test_the_sft_stage_removes_orphans_but_not_a_live_jobs_temp_dir(copied):
    stopped, survivors, *_ = copied
    assert survivors == {"claimed", "live pid"}
    assert "orphans: removed 2 partial file(s) of interrupted writes under" in stopped.stdout
