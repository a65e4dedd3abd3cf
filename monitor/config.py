"""Daemon configuration: one TOML file, resolved and validated once at start.

Every option and its default is documented in `configs/monitor.toml`. Unknown sections or keys
are errors so that a typo never passes silently.
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from monitor.errors import ConfigError
from monitor.wire import F32_MAX, MAX_ABS_SAMPLE


@dataclass(frozen=True, slots=True)
class MqttConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    protocol: int = 5
    client_id: str = ""
    username: str = ""
    password_file: str = ""
    password_env: str = ""
    tls: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    topic_prefix: str = "ecg"
    share_group: str = ""
    qos: int = 1
    session_expiry_s: int = 3600
    receive_maximum: int = 65535
    max_inflight_out: int = 1000
    # Largest packet we send; the broker's CONNACK Maximum Packet Size lowers it (MQTT 5).
    max_packet_bytes: int = 1 << 20
    keepalive_s: int = 30
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    # Resolved at load time from password_file / password_env; never from the command line.
    password: str | None = field(default=None, repr=False)

    @property
    def subscription(self) -> str:
        topic = f"{self.topic_prefix}/+/window"
        return f"$share/{self.share_group}/{topic}" if self.share_group else topic


@dataclass(frozen=True, slots=True)
class ModelConfig:
    path: str = "../models/ecg5000-vae.onnx"
    threshold: float = math.nan
    provider: str = "auto"
    intra_op_threads: int = 0
    graph_optimization: str = "all"
    watch_s: float = 0.0

    @property
    def threshold_override(self) -> float | None:
        return None if math.isnan(self.threshold) else self.threshold


AUTO = -1  # `max_batch = "auto"` / `pipeline_depth = "auto"`: sized for the provider
# provider -> (max_batch, pipeline_depth) for "auto". A GPU needs thousands of windows per call
# to be busy, and more batches in flight to hide the copies. On CPU the batch is sized by the
# model's measured cost (`cpu_auto_batch`): every batch pays a fixed cost in the daemon
# (batching, scoring, the alert and ack run: ~0.5-0.8 ms here), so a cheap model wants
# batches as large as latency allows, an expensive one (the LSTM) gains nothing past 64.
AUTO_BATCH: dict[str, tuple[int, int]] = {
    "CPUExecutionProvider": (64, 2),
    "CUDAExecutionProvider": (4096, 4),
}
CPU_AUTO_BATCHES = (128, 256, 512, 1024)  # above the CPU entry's 64
CPU_BATCH_BUDGET_S = 0.002  # the inference time a CPU "auto" batch may cost


def cpu_auto_batch(seconds_per_window: float | None) -> int:
    """The largest of CPU_AUTO_BATCHES whose inference takes at most CPU_BATCH_BUDGET_S at
    the measured cost per window; AUTO_BATCH's CPU size (64) when the cost is unknown or
    none of them fits."""
    floor = AUTO_BATCH["CPUExecutionProvider"][0]
    if seconds_per_window is None or not seconds_per_window > 0.0:
        return floor
    fits = [n for n in CPU_AUTO_BATCHES if n * seconds_per_window <= CPU_BATCH_BUDGET_S]
    return fits[-1] if fits else floor


@dataclass(frozen=True, slots=True)
class BatchConfig:
    max_batch: int = AUTO
    max_wait_ms: float = 5.0
    pipeline_depth: int = AUTO

    def for_provider(
        self,
        provider: str,
        queue_windows: int | None = None,
        seconds_per_window: float | None = None,
    ) -> BatchConfig:
        """Concrete sizes for the provider the model runs on ("auto" resolved; on CPU from the
        model's measured `seconds_per_window`; max_batch never above queue_windows)."""
        batch, depth = AUTO_BATCH.get(provider, AUTO_BATCH["CPUExecutionProvider"])
        if provider != "CUDAExecutionProvider":
            batch = cpu_auto_batch(seconds_per_window)
        max_batch = batch if self.max_batch == AUTO else self.max_batch
        if queue_windows is not None and self.max_batch == AUTO:
            max_batch = min(max_batch, queue_windows)
        return dataclasses.replace(
            self,
            max_batch=max_batch,
            pipeline_depth=depth if self.pipeline_depth == AUTO else self.pipeline_depth,
        )


@dataclass(frozen=True, slots=True)
class AlertsConfig:
    min_consecutive: int = 1
    cooldown_s: float = 0.0
    publish_scores: bool = False
    storm_windows: int = 200
    storm_fleet_windows: int = 2000
    storm_share: float = 0.5


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    max_payload_bytes: int = 1 << 20
    max_windows_per_message: int = 4096
    queue_windows: int = 8192
    max_abs_sample: float = MAX_ABS_SAMPLE


@dataclass(frozen=True, slots=True)
class StreamsConfig:
    enabled: bool = False
    windows: bool = True
    share_group: str = ""
    partition: str = ""
    idle_forget_s: float = 600.0
    max_devices: int = 10000
    max_chunk_s: float = 60.0
    min_fs: float = 100.0
    max_fs: float = 1000.0

    @property
    def part(self) -> tuple[int, int]:
        """(i, n) of partition = "i/n"; (0, 1) when not partitioned."""
        if not self.partition:
            return (0, 1)
        i, n = self.partition.split("/")
        return (int(i), int(n))


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    host: str = "127.0.0.1"
    port: int = 0


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    instance_id: str = ""
    drain_timeout_s: float = 10.0
    log_format: str = "auto"
    log_level: str = "info"


@dataclass(frozen=True, slots=True)
class Config:
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    streams: StreamsConfig = field(default_factory=StreamsConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)

    @property
    def status_topic(self) -> str:
        return f"ecg-monitor/{self.service.instance_id}/status"

    @property
    def inputs_windows(self) -> bool:
        """Whether `<prefix>/+/window` is subscribed (always, unless streams replace it)."""
        return not self.streams.enabled or self.streams.windows


_SECTION_TYPES: dict[str, type[Any]] = {
    "mqtt": MqttConfig,
    "model": ModelConfig,
    "batch": BatchConfig,
    "alerts": AlertsConfig,
    "limits": LimitsConfig,
    "streams": StreamsConfig,
    "metrics": MetricsConfig,
    "service": ServiceConfig,
}
_TOPIC_BAD = set("+#/")


def load_config(path: str | Path, env: dict[str, str] | None = None) -> Config:
    """Read, resolve and validate a TOML config file; ConfigError with a one-line reason."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror or e}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config {path} is not valid TOML: {e}") from None
    return build_config(raw, base_dir=path.resolve().parent, env=env)


def build_config(
    raw: dict[str, Any], base_dir: Path | None = None, env: dict[str, str] | None = None
) -> Config:
    """Turn parsed TOML into a validated Config (paths against base_dir, secrets from env)."""
    env = dict(os.environ) if env is None else env
    base_dir = base_dir or Path.cwd()
    unknown = set(raw) - set(_SECTION_TYPES)
    if unknown:
        raise ConfigError(f"unknown config section(s): {', '.join(sorted(unknown))}")
    sections: dict[str, Any] = {}
    for name, cls in _SECTION_TYPES.items():
        values = raw.get(name, {})
        if not isinstance(values, dict):
            raise ConfigError(f"[{name}] must be a table")
        sections[name] = _section(name, cls, values)
    cfg = Config(**sections)
    return _resolve(cfg, base_dir, env)


def _section(name: str, cls: type[Any], values: dict[str, Any]) -> Any:
    known = {f.name: f for f in fields(cls) if f.name != "password"}
    unknown = set(values) - set(known)
    if unknown:
        raise ConfigError(f"unknown key(s) in [{name}]: {', '.join(sorted(unknown))}")
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        default = getattr(cls(), key)
        if cls is BatchConfig and key in ("max_batch", "pipeline_depth"):
            if value == "auto":
                kwargs[key] = AUTO
                continue
            if value == AUTO and not isinstance(value, bool):  # the sentinel is not a size
                raise ConfigError(f'{name}.{key} must be >= 1 or "auto", not {value!r}')
        kwargs[key] = _coerce(f"{name}.{key}", value, default)
    return cls(**kwargs)


def _coerce(where: str, value: Any, default: Any) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, not {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, not {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where} must be a number, not {value!r}")
        number = float(value)
        if not math.isfinite(number) and not (math.isnan(default) and math.isnan(number)):
            raise ConfigError(f"{where} must be a finite number, not {value!r}")
        return number
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, not {value!r}")
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise ConfigError(f"{where} must not contain control characters")
        return value
    raise ConfigError(f"{where}: unsupported option type")  # pragma: no cover


def _path(base_dir: Path, value: str) -> str:
    if not value:
        return value
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base_dir / p).resolve())


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _resolve(cfg: Config, base_dir: Path, env: dict[str, str]) -> Config:
    m, mo, b, a, li, me, s = (
        cfg.mqtt,
        cfg.model,
        cfg.batch,
        cfg.alerts,
        cfg.limits,
        cfg.metrics,
        cfg.service,
    )
    _check(bool(m.host), "mqtt.host must not be empty")
    _check(0 < m.port < 65536, f"mqtt.port {m.port} is not a TCP port")
    _check(m.protocol in (5, 311), f"mqtt.protocol must be 5 or 311, not {m.protocol}")
    _check(m.qos in (0, 1), f"mqtt.qos must be 0 or 1, not {m.qos}")
    _check(
        bool(m.topic_prefix) and not (_TOPIC_BAD & set(m.topic_prefix)),
        f"mqtt.topic_prefix {m.topic_prefix!r} must be one non-empty topic level without + # /",
    )
    _check(
        not (_TOPIC_BAD & set(m.share_group)),
        f"mqtt.share_group {m.share_group!r} must not contain + # /",
    )
    _check(
        not (m.share_group and m.protocol != 5),
        "mqtt.share_group needs protocol = 5 (shared subscriptions are MQTT 5)",
    )
    _check(0 < m.receive_maximum <= 65535, "mqtt.receive_maximum must be in 1..65535")
    _check(0 < m.max_inflight_out <= 65535, "mqtt.max_inflight_out must be in 1..65535")
    _check(
        1024 <= m.max_packet_bytes <= 268_435_455,
        "mqtt.max_packet_bytes must be in 1024..268435455 (the MQTT maximum)",
    )
    _check(0 <= m.session_expiry_s < 1 << 32, "mqtt.session_expiry_s must be in 0..4294967295")
    _check(5 <= m.keepalive_s <= 65535, "mqtt.keepalive_s must be in 5..65535")
    _check(len(m.client_id) <= 256, "mqtt.client_id must be at most 256 characters")
    _check(len(m.username) <= 256, "mqtt.username must be at most 256 characters")
    _check(
        0 < m.reconnect_min_s <= m.reconnect_max_s,
        "mqtt.reconnect_min_s must be > 0 and <= reconnect_max_s",
    )
    _check(
        not (m.password_file and m.password_env),
        "set only one of mqtt.password_file and mqtt.password_env",
    )
    _check(bool(m.cert_file) == bool(m.key_file), "mqtt.cert_file and mqtt.key_file go together")
    password: str | None = None
    password_file = _path(base_dir, m.password_file)
    if password_file:
        try:
            lines = Path(password_file).read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise ConfigError(
                f"cannot read mqtt.password_file {password_file}: {e.strerror}"
            ) from None
        password = lines[0] if lines else ""
    elif m.password_env:
        if m.password_env not in env:
            raise ConfigError(f"mqtt.password_env: ${m.password_env} is not set")
        password = env[m.password_env]
    _check(password is None or bool(m.username), "a broker password needs mqtt.username")
    for key in ("ca_file", "cert_file", "key_file"):
        value = _path(base_dir, getattr(m, key))
        _check(not value or Path(value).is_file(), f"mqtt.{key} {value} does not exist")
    _check(m.tls or not (m.ca_file or m.cert_file), "mqtt.ca_file/cert_file need mqtt.tls = true")

    _check(bool(mo.path), "model.path must not be empty")
    _check(
        mo.provider in ("auto", "cpu", "cuda"),
        f"model.provider must be auto, cpu or cuda, not {mo.provider!r}",
    )
    _check(
        mo.graph_optimization in ("disable", "basic", "extended", "all"),
        "model.graph_optimization must be disable, basic, extended or all",
    )
    _check(0 <= mo.intra_op_threads <= 1024, "model.intra_op_threads must be in 0..1024")
    _check(
        math.isnan(mo.threshold) or math.isfinite(mo.threshold),
        "model.threshold must be finite (or nan for the model's own)",
    )
    _check(mo.watch_s >= 0, "model.watch_s must be >= 0")

    _check(
        1 <= b.max_batch <= 65536 or b.max_batch == AUTO,
        'batch.max_batch must be >= 1 (and <= 65536) or "auto"',
    )
    _check(0 <= b.max_wait_ms <= 60_000, "batch.max_wait_ms must be in 0..60000")
    _check(
        1 <= b.pipeline_depth <= 64 or b.pipeline_depth == AUTO,
        'batch.pipeline_depth must be in 1..64 or "auto"',
    )
    _check(1 <= a.min_consecutive <= 1_000_000, "alerts.min_consecutive must be in 1..1000000")
    _check(a.cooldown_s >= 0, "alerts.cooldown_s must be >= 0")
    _check(0 <= a.storm_windows <= 1_000_000, "alerts.storm_windows must be in 0..1000000")
    _check(
        0 <= a.storm_fleet_windows <= 10_000_000,
        "alerts.storm_fleet_windows must be in 0..10000000",
    )
    _check(0 < a.storm_share <= 1, "alerts.storm_share must be in (0, 1]")
    _check(
        64 <= li.max_payload_bytes <= 268_435_455,
        "limits.max_payload_bytes must be in 64..268435455",
    )
    _check(
        1 <= li.max_windows_per_message <= 65535,
        "limits.max_windows_per_message must be in 1..65535",
    )
    _check(
        li.queue_windows >= b.for_provider("CPUExecutionProvider").max_batch,
        "limits.queue_windows must be >= batch.max_batch",
    )
    _check(li.queue_windows <= 10_000_000, "limits.queue_windows must be <= 10000000")
    _check(
        0 < li.max_abs_sample <= F32_MAX,
        f"limits.max_abs_sample must be > 0 and <= {F32_MAX:.8g} (the float32 maximum)",
    )
    st = cfg.streams
    _check(
        not (_TOPIC_BAD & set(st.share_group)),
        f"streams.share_group {st.share_group!r} must not contain + # /",
    )
    _check(not (st.share_group and m.protocol != 5), "streams.share_group needs protocol = 5")
    if st.partition:
        try:
            pi, pn = st.part
        except ValueError:
            raise ConfigError(
                f'streams.partition {st.partition!r} must be "i/n" with 0 <= i < n'
            ) from None
        _check(0 <= pi < pn, f"streams.partition {st.partition!r} must have 0 <= i < n")
    _check(st.idle_forget_s > 0, "streams.idle_forget_s must be > 0")
    _check(st.max_devices >= 1, "streams.max_devices must be >= 1")
    _check(0 < st.max_chunk_s <= 600, "streams.max_chunk_s must be in (0, 600]")
    _check(0 < st.min_fs <= st.max_fs, "streams.min_fs must be > 0 and <= streams.max_fs")
    _check(0 <= me.port < 65536, f"metrics.port {me.port} is not a TCP port (0 = off)")
    _check(bool(me.host) or me.port == 0, "metrics.host must not be empty")
    _check(0 < s.drain_timeout_s <= 3600, "service.drain_timeout_s must be in (0, 3600]")
    _check(
        s.log_format in ("auto", "json", "console"),
        "service.log_format must be auto, json or console",
    )
    _check(
        s.log_level in ("debug", "info", "warning", "error"),
        "service.log_level must be debug, info, warning or error",
    )
    instance_id = s.instance_id or socket.gethostname()
    _check(
        not (_TOPIC_BAD & set(instance_id)) and len(instance_id) <= 128,
        f"service.instance_id {instance_id[:130]!r} must not contain + # / (and <= 128 chars)",
    )
    # A broker that ties client ids to users (the shipped one: use_username_as_clientid)
    # replaces this with the username: there, each instance needs its own user.
    client_id = m.client_id or f"ecg-monitor-{instance_id}"
    return dataclasses.replace(
        cfg,
        mqtt=dataclasses.replace(
            m,
            client_id=client_id,
            password_file=password_file,
            password=password,
            ca_file=_path(base_dir, m.ca_file),
            cert_file=_path(base_dir, m.cert_file),
            key_file=_path(base_dir, m.key_file),
        ),
        model=dataclasses.replace(mo, path=_path(base_dir, mo.path)),
        service=dataclasses.replace(s, instance_id=instance_id),
    )
