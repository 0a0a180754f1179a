"""Shared test set-up: quiet TensorFlow, the TensorFlow backend, and the real-data path."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# Under `-n N` (N >= 2) each worker's TensorFlow, and the scripts it starts, use one thread
# per op pool: N workers already fill N cores, and pools sized to every core in every worker
# spend the run switching between threads. Set before TensorFlow loads; an explicit setting
# (e.g. a script's --latency_threads) still wins.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) >= 2:
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")

import pathlib

import pytest

# The real CIFAR-10 copies the project's tests read (../shared/data, beside the checkout).
SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is not present")
    return SHARED_DATA
