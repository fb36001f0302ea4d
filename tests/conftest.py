"""Shared fixtures: the real data in ../shared/data (skipped with a reason when absent), and
a seeded single-thread setting for tests of tiny models."""
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def shared_data():
    """Path of ../shared/data; skips the test when the folder is not there."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (see shared/data/README.md)")
    return SHARED_DATA


@contextmanager
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def seeded_one_thread():
    """Seed torch and run on one thread: tiny models gain nothing from threads, and on a
    shared 2-core machine step-by-step loops with two OpenMP threads run about 20x slower."""
    torch.manual_seed(0)
    with _one_torch_thread():
        yield


@pytest.fixture(scope="module")
def one_thread_module():
    """One torch thread for a whole test module (as ``seeded_one_thread``, without the seed;
    use with ``pytestmark = pytest.mark.usefixtures("one_thread_module")``)."""
    with _one_torch_thread():
        yield
