"""Fixtures shared by the test files; helper functions live in tests/helpers/ (a package, imported by name)."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_output_root(tmp_path_factory) -> Path:
    """One output root for the pipeline tests, so the tiny model and the SFT stage are built once."""
    return tmp_path_factory.mktemp("outputs")
