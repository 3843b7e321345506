"""Shared fixtures: a private facekd cache folder; paths to ../shared research data (skipped
where absent)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture(scope="session", autouse=True)
def facekd_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every test (and every subprocess it starts) uses a fresh cache folder, never ~/.cache."""
    folder = tmp_path_factory.mktemp("facekd-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FACEKD_CACHE", str(folder))
        yield folder


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread: far faster for tiny models on a shared, busy CPU (restored after
    the module). Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def shared_path(*parts: str) -> Path:
    """A path under ../shared, skipping the test when it is not there (a user's clone)."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not available (research data lives in ../shared)")
    return path
