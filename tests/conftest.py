"""Fixtures shared by the test files; helper functions live in tests/helpers/ (a package, imported by name)."""

import os
from pathlib import Path

import pytest

# One torch thread per process, set before anything imports torch (the subprocesses inherit it): the tests run
# two xdist workers, each often with two training processes, on a 2-core machine, where the OpenMP threads of
# oversubscribed processes spin waiting for their turn (a DPO run's CPU time nearly doubles, its losses are
# the same), and the tiny models gain nothing from a second thread.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

from helpers.slurm_fixture import slurm_cluster  # noqa: E402,F401  (the fixture, for every test that asks for it)


@pytest.fixture(scope="session")
def shared_output_root(tmp_path_factory) -> Path:
    """One output root for the pipeline tests, so the tiny model and the SFT stage are built once."""
    return tmp_path_factory.mktemp("outputs")


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (`make test` runs two workers with `--dist loadgroup`), a test file runs on one
    worker, so its module-scoped runs are made once; the tests of one shared server (the SLURM cluster,
    Label Studio) run on one worker whatever their file: each worker would start its own, and two starting
    one cluster at the same moment race on its daemons."""
    for item in items:
        server = next((name for name in ("slurm", "annotate") if item.get_closest_marker(name)), None)
        item.add_marker(pytest.mark.xdist_group(server or item.nodeid.split("::")[0]))


@pytest.fixture(scope="session")
def slurm_output_root(tmp_path_factory) -> Path:
    """One output root for the SLURM sweep, search and multi-node tests (each under its own experiment name):
    their SFT settings are the same, so the first SFT job trains it and the others' SFT jobs reuse it."""
    return tmp_path_factory.mktemp("slurm_outputs")
