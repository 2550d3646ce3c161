"""Test-wide settings: no test ever reaches the network; helpers live in ``_models.py``."""

import os
from pathlib import Path

import pytest

# Set before transformers/huggingface_hub are imported by any test module: a hub name that
# is not cached must fail at once instead of trying the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def need_path(path: Path, what: str) -> Path:
    """``path`` if it exists; else skip the test, or fail it when CI=true (data must be there)."""
    if path.exists():
        return path
    reason = f"{what} not found at {path}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the data must be present)")
    pytest.skip(f"{reason}; it is not in the repo (set CI=true to make this a failure)")


@pytest.fixture(scope="module")
def shared_data() -> Path:
    """``<repo>/../shared/data``, the real datasets (never copied into the repo)."""
    return need_path(SHARED_DATA, "the shared datasets folder (../shared/data)")
