"""Shared fixtures: a real mosquitto per session, paths to the shared data."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.brokers import Mosquitto
from tests.monitor.daemon import Daemon

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
ECG5000_TRAIN = SHARED_DATA / "ECG5000" / "ECG5000_TRAIN.arff"
MNIST_DIR = SHARED_DATA / "MNIST"


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """One real mosquitto broker for the whole session, on a free port."""
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        pytest.skip("mosquitto is not installed")
    broker = Mosquitto(data_dir=tmp_path_factory.mktemp("mosquitto")).start()
    yield broker
    broker.stop()


@pytest.fixture
def fresh_mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A broker of the test's own (for restarts and persistence), stopped after it."""
    broker = Mosquitto(data_dir=tmp_path / "broker", persistence=True).start()
    yield broker
    broker.stop()


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    """Daemon subprocesses a test starts; each is stopped after the test."""
    started: list[Daemon] = []
    yield started
    for d in started:
        d.stop()


@pytest.fixture(scope="session")
def ecg5000_train() -> Path:
    if not ECG5000_TRAIN.exists():
        pytest.skip("../shared/data/ECG5000 is absent")
    return ECG5000_TRAIN


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    if not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("../shared/data/MNIST is absent")
    return MNIST_DIR
