"""A mosquitto started from the SHIPPED deploy/mosquitto config, rewritten only for a test.

Rewritten: the two listener ports (ephemeral), the file locations (tmp_path), the log (a file)
and, when the tests run as root, `user root` so the broker can read its tmp files. Everything
else (auth, ACL, TLS settings, queue limits, persistence) is exactly what operators install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.brokers import MOSQUITTO, Mosquitto, free_port

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
MOSQUITTO_DIR = DEPLOY / "mosquitto"

# username -> password for every role in deploy/mosquitto/acl
USERS = {
    "d1": "pw-d1",
    "d2": "pw-d2",
    "ecg-monitor": "pw-monitor",
    "ecg-monitor-2": "pw-monitor-2",
    "alerts": "pw-alerts",
    "ops": "pw-ops",
}


@dataclass
class SecureBroker:
    broker: Mosquitto
    tls_port: int
    plain_port: int
    certs: Path
    passwd: Path

    @property
    def ca(self) -> Path:
        return self.certs / "ca.crt"


def rewrite_config(text: str, *, tls_port: int, plain_port: int, etc: Path) -> str:
    """The shipped config with test ports and paths; fails loudly if the shipped file drifts."""
    replacements = [
        ("listener 8883\n", "listener {port} 127.0.0.1\n"),
        ("listener 1883 127.0.0.1\n", f"listener {plain_port} 127.0.0.1\n"),
        ("/etc/mosquitto/ecg/", f"{etc}/"),
        ("persistence_location /var/lib/mosquitto/", "persistence_location {data_dir}/"),
        ("log_dest syslog", "log_dest file {data_dir}/mosquitto.log"),
    ]
    for old, new in replacements:
        assert old in text, f"shipped mosquitto config no longer contains {old!r}"
        text = text.replace(old, new)
    if os.geteuid() == 0:
        text += "\n# test only: running as root, keep root so tmp files stay readable\nuser root\n"
    return text


def make_passwd(path: Path, users: dict[str, str]) -> None:
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        pytest.skip("mosquitto_passwd is not installed")
    path.unlink(missing_ok=True)
    for i, (user, password) in enumerate(users.items()):
        args = [tool, *(["-c"] if i == 0 else []), "-b", str(path), user, password]
        subprocess.run(args, check=True, capture_output=True)


def make_certs(out: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    subprocess.run(
        [str(MOSQUITTO_DIR / "make-dev-certs.sh"), str(out), "--client", "d1"],
        check=True,
        capture_output=True,
    )


@pytest.fixture(scope="session")
def dev_certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped certificate script run into a tmp dir."""
    out = tmp_path_factory.mktemp("certs")
    make_certs(out)
    return out


def start_secure_broker(root: Path, certs: Path) -> SecureBroker:
    if not Path(MOSQUITTO).exists():
        pytest.skip("mosquitto is not installed")
    etc = root / "etc"
    (etc / "certs").mkdir(parents=True)
    for name in ("ca.crt", "server.crt", "server.key"):
        shutil.copy(certs / name, etc / "certs" / name)
    shutil.copy(MOSQUITTO_DIR / "acl", etc / "acl")
    make_passwd(etc / "passwd", USERS)
    tls_port, plain_port = free_port(), free_port()
    text = rewrite_config(
        (MOSQUITTO_DIR / "ecg.conf").read_text(), tls_port=tls_port, plain_port=plain_port, etc=etc
    )
    broker = Mosquitto(data_dir=root / "data", port=tls_port, persistence=True, config_text=text)
    broker.start()
    return SecureBroker(broker, tls_port, plain_port, certs, etc / "passwd")


@pytest.fixture(scope="module")
def secure_broker(
    tmp_path_factory: pytest.TempPathFactory, dev_certs: Path
) -> Iterator[SecureBroker]:
    """The shipped broker config on ephemeral ports, shared by a test module."""
    sb = start_secure_broker(tmp_path_factory.mktemp("secure-broker"), dev_certs)
    yield sb
    sb.broker.stop()


@pytest.fixture
def fresh_secure_broker(tmp_path: Path, dev_certs: Path) -> Iterator[SecureBroker]:
    """The shipped broker config, one per test (for restarts)."""
    sb = start_secure_broker(tmp_path / "secure-broker", dev_certs)
    yield sb
    sb.broker.stop()
