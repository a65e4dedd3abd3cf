"""Real mosquitto brokers for tests: each on a free port with its own config."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"

# Queue limits set on purpose: the default max_queued_messages 1000 silently
# drops QoS 1 messages to a slow subscriber.
BASE_CONFIG = """\
listener {port} 127.0.0.1
allow_anonymous true
max_inflight_messages 1000
max_queued_messages 0
max_queued_bytes 0
max_packet_size 1048576
persistence {persistence}
persistence_location {data_dir}/
autosave_interval 1
log_dest file {data_dir}/mosquitto.log
log_type error
log_type warning
log_type notice
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


@dataclass
class Mosquitto:
    """A mosquitto process on 127.0.0.1:port; restartable with the same data dir."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    persistence: bool = False
    config_text: str | None = None  # full config; {port} and {data_dir} are filled in
    host: str = "127.0.0.1"
    proc: subprocess.Popen[bytes] | None = None

    @property
    def config_path(self) -> Path:
        return self.data_dir / "mosquitto.conf"

    def start(self) -> Mosquitto:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        text = self.config_text if self.config_text is not None else BASE_CONFIG
        self.config_path.write_text(
            text.format(
                port=self.port,
                data_dir=self.data_dir,
                persistence="true" if self.persistence else "false",
            )
        )
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            wait_for_port(self.host, self.port)
        except TimeoutError:
            self.stop()
            log = (self.data_dir / "mosquitto.log").read_text(errors="replace")
            raise RuntimeError(f"mosquitto did not start:\n{log}") from None
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        path = self.data_dir / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""


SHIPPED_CONF = Path(__file__).resolve().parents[1] / "deploy" / "mosquitto" / "ecg.conf"
_LIMIT_KEYS = (
    "max_packet_size",
    "max_inflight_messages",
    "max_inflight_bytes",
    "max_queued_messages",
    "max_queued_bytes",
    "use_username_as_clientid",
)


def shipped_limits() -> dict[str, str]:
    """The limits the shipped deploy/mosquitto/ecg.conf sets (packet size, in-flight, queues)."""
    out: dict[str, str] = {}
    for line in SHIPPED_CONF.read_text().splitlines():
        key, _, value = line.partition(" ")
        if key in _LIMIT_KEYS:
            out[key] = value.strip()
    assert "max_packet_size" in out, "the shipped broker config no longer sets max_packet_size"
    return out


def shipped_limits_config() -> str:
    """An anonymous plain broker (any device id may publish) with the shipped limits."""
    limits = shipped_limits()
    limits.pop("use_username_as_clientid", None)  # anonymous clients have no username
    lines = [line for line in BASE_CONFIG.splitlines() if line.partition(" ")[0] not in limits]
    return "\n".join([*lines, *(f"{k} {v}" for k, v in limits.items())]) + "\n"
