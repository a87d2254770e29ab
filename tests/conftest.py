"""Shared fixtures and the --accelerator / --devices options (default: CPU)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
# The benchmark drivers (repository root, not installed) import as top-level modules, as when run as scripts.
sys.path.insert(0, str(ROOT / "benchmarks"))
SHARED_DATA = Path(os.environ.get("BIODIFFUSE_DATA_DIR", ROOT.parent / "shared" / "data"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--accelerator", default="cpu", help="Lightning accelerator for training tests")
    parser.addoption("--devices", default="1", help="Lightning devices for training tests")


@pytest.fixture(scope="session")
def accelerator(request: pytest.FixtureRequest) -> str:
    return request.config.getoption("--accelerator")


@pytest.fixture(scope="session")
def devices(request: pytest.FixtureRequest) -> int | str:
    d = request.config.getoption("--devices")
    return int(d) if d.isdigit() else d


@pytest.fixture(scope="session")
def device(accelerator: str) -> str:
    return "cuda" if accelerator in ("gpu", "cuda") else "cpu"


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Pin torch to one thread: on a loaded 2-core machine the default thread count made one
    training fixture run for 53 minutes instead of 101 s."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
