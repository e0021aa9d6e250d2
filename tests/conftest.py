import os
from pathlib import Path

import pytest

from attnrec.benchmarking import shared_data as shared_data_dir

torch = pytest.importorskip("torch")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

SHARED_DATA = shared_data_dir()  # $ATTNREC_SHARED_DATA, else ../shared/data next to the checkout


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "beauty.txt").exists():
        pytest.skip(f"real datasets not found at {SHARED_DATA} (only present in the project's workspace and CI)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def small_synthetic():
    """A small synthetic shop (planted accessory-after-product rules), shared by tests."""
    from attnrec.data.synthetic import generate

    return generate(n_users=300, n_items=80, seed=7)
