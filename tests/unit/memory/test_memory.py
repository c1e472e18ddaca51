"""peak_rss_mb (train/core/memory.py): the figure results.json and the benchmark report per process.

Measured in a fresh interpreter (this pytest process's own high-water mark depends on the tests before)."""

import json
import subprocess
import sys

from helpers.runs import REPO

BUFFER_MB = 200
PROBE = f"""
import json, resource, subprocess, sys
from train.core.memory import peak_rss_mb

before = peak_rss_mb()
buf = bytearray({BUFFER_MB} << 20)
buf[::4096] = b"\\x01" * len(range(0, len(buf), 4096))  # touch every page: resident, not just reserved
after = peak_rss_mb()
del buf
after_free = peak_rss_mb()
# A process started from this big one (fork + exec, as a launcher or the benchmark starts its runs).
child = subprocess.run([sys.executable, "-c", "import json, resource; from train.core.memory import peak_rss_mb; "
                        "print(json.dumps([peak_rss_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024]))"],
                       capture_output=True, text=True, check=True).stdout
child_peak, child_ru_maxrss = json.loads(child)
print(json.dumps(dict(before=before, after=after, after_free=after_free, child=child_peak,
                      child_ru_maxrss=child_ru_maxrss)))
"""


def test_peak_rss_is_this_process_high_water_mark_and_not_its_parents():
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads(proc.stdout.splitlines()[-1])
    # A touched 200 MB buffer raises the figure by ~200 MB (the interpreter's own pages on top are a few MB).
    assert 0.95 * BUFFER_MB <= m["after"] - m["before"] <= 1.1 * BUFFER_MB, m
    # A high-water mark: freeing does not bring it back (the kernel's RSS counters are batched: ~1 MB slack).
    assert m["after_free"] >= m["after"] - 2, m
    # The child reports its own peak (a bare interpreter, far below the parent's) ...
    assert m["child"] < m["after"] - 0.75 * BUFFER_MB, m
    # ... where getrusage's ru_maxrss, carried over exec on Linux, reports the parent's: the case that
    # makes the difference between the two figures observable here.
    assert m["child_ru_maxrss"] >= m["after"] - 0.05 * BUFFER_MB, m
