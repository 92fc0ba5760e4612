"""Fixtures shared by the tests: the checkout's root, the shared test data, a child environment."""

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir():
    """$MLSCRATCH_SHARED_DATA, or ../shared/data beside the checkout."""
    return Path(os.environ.get("MLSCRATCH_SHARED_DATA", ROOT.parent / "shared" / "data"))


def find_shared(name):
    """A file of the shared test data (Tiny Shakespeare, Multi30k, GPT-2's tokenizer files),
    or skip the test saying where it was looked for."""
    path = shared_data_dir() / name
    if not path.exists():
        pytest.skip(
            f"{name} not found in {shared_data_dir()}: set MLSCRATCH_SHARED_DATA to "
            "the folder holding the shared test data"
        )
    return path


@pytest.fixture(scope="session")
def repo_root():
    """The root of this checkout (holding book/, src/, tests/)."""
    return ROOT


@pytest.fixture(scope="session")
def shared_data():
    """A function: name -> path of a shared data file, skipping the test when it is absent."""
    return find_shared


@pytest.fixture(scope="session")
def child_env():
    """The environment for a child process: this checkout's package, one thread, and no
    distributed ranks inherited from the parent."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def make_pairs(n, seed=0, vocab=20, max_len=9):
    """n random (source ids, target ids) pairs of lengths 1..max_len-1 and 0..max_len-1,
    ids from 3 up (0, 1, 2 are padding, beginning and end of sentence)."""
    rng = np.random.default_rng(seed)
    return [
        (
            rng.integers(3, vocab, rng.integers(1, max_len)).tolist(),
            rng.integers(3, vocab, rng.integers(0, max_len)).tolist(),
        )
        for _ in range(n)
    ]


@pytest.fixture(scope="session")
def random_pairs():
    """A function: (n, seed=0, vocab=20, max_len=9) -> n random sentence pairs of ids."""
    return make_pairs
