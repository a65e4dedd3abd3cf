"""The daemon's TOML config: documented defaults, strict keys, paths and secrets."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from monitor.config import AUTO, Config, build_config, load_config
from monitor.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "configs" / "monitor.toml"


def test_shipped_config_documents_every_option_with_its_default() -> None:
    raw = tomllib.loads(SHIPPED.read_text())
    defaults = Config()
    for section in dataclasses.fields(Config):
        sub = getattr(defaults, section.name)
        names = {f.name for f in dataclasses.fields(sub) if f.name != "password"}
        assert set(raw[section.name]) == names, section.name
        for key, value in raw[section.name].items():
            default = getattr(sub, key)
            if isinstance(default, float) and math.isnan(default):
                assert math.isnan(value), key
            elif value == "auto" and default == AUTO:  # batch sizes: the AUTO sentinel
                pass
            else:
                assert value == default, f"{section.name}.{key}"


def test_shipped_config_loads_and_resolves_paths_against_its_directory() -> None:
    cfg = load_config(SHIPPED)
    assert Path(cfg.model.path) == (ROOT / "models" / "ecg5000-vae.onnx").resolve()
    assert cfg.mqtt.subscription == "ecg/+/window"
    assert cfg.service.instance_id  # the host name by default
    assert cfg.mqtt.client_id == f"ecg-monitor-{cfg.service.instance_id}"
    assert cfg.status_topic == f"ecg-monitor/{cfg.service.instance_id}/status"
    assert cfg.model.threshold_override is None


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"mqtt": {"hots": "x"}}, "unknown key(s) in [mqtt]: hots"),
        ({"modle": {}}, "unknown config section(s): modle"),
        ({"mqtt": {"port": "1883"}}, "mqtt.port must be an integer"),
        ({"mqtt": {"port": 70000}}, "is not a TCP port"),
        ({"mqtt": {"protocol": 4}}, "mqtt.protocol must be 5 or 311"),
        ({"mqtt": {"share_group": "g", "protocol": 311}}, "needs protocol = 5"),
        ({"mqtt": {"topic_prefix": "a/b"}}, "topic_prefix"),
        ({"mqtt": {"tls": 1}}, "mqtt.tls must be true or false"),
        ({"batch": {"max_batch": 0}}, "batch.max_batch must be >= 1"),
        ({"model": {"provider": "tpu"}}, "model.provider"),
        ({"service": {"log_format": "xml"}}, "service.log_format"),
        ({"limits": {"queue_windows": 10}}, "queue_windows must be >= batch.max_batch"),
        ({"mqtt": {"password_env": "NOPE_NOT_SET"}}, "$NOPE_NOT_SET is not set"),
    ],
)
def test_bad_options_are_errors_with_a_one_line_reason(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_config(raw, env={})
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_password_comes_from_a_file_or_an_environment_variable(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("s3cret\n")
    cfg = build_config(
        {"mqtt": {"username": "mon", "password_file": "secret"}}, base_dir=tmp_path, env={}
    )
    assert cfg.mqtt.password == "s3cret"
    assert "s3cret" not in repr(cfg)
    cfg = build_config({"mqtt": {"username": "mon", "password_env": "PW"}}, env={"PW": "x"})
    assert cfg.mqtt.password == "x"
    with pytest.raises(ConfigError, match=r"needs mqtt\.username"):
        build_config({"mqtt": {"password_env": "PW"}}, env={"PW": "x"})


def test_share_group_and_threshold_override() -> None:
    cfg = build_config({"mqtt": {"share_group": "g"}, "model": {"threshold": 3}}, env={})
    assert cfg.mqtt.subscription == "$share/g/ecg/+/window"
    assert cfg.model.threshold_override == 3.0


def test_unreadable_or_invalid_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[mqtt\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_batch_sizes_auto_by_provider_and_explicit_values_win(tmp_path: Path) -> None:
    """`max_batch`/`pipeline_depth` default to "auto": on CPU 64..1024 windows by the model's
    measured cost per window (64 when unknown) and depth 2, 4096/4 on CUDA (never above
    queue_windows); explicit numbers are kept for every provider."""
    auto = build_config({}, base_dir=tmp_path, env={}).batch
    assert (auto.max_batch, auto.pipeline_depth) == (AUTO, AUTO)
    cpu, cuda = (
        auto.for_provider("CPUExecutionProvider"),
        auto.for_provider("CUDAExecutionProvider"),
    )
    assert (cpu.max_batch, cpu.pipeline_depth) == (64, 2)
    assert (cuda.max_batch, cuda.pipeline_depth) == (4096, 4)
    # a dense model (~1 us a window here) gets 1024, the LSTM (~1.5 ms a window) stays at 64,
    # a cost in between the largest power of two that keeps a batch within 2 ms
    sizes = [auto.for_provider("CPUExecutionProvider", None, c).max_batch for c in (1e-6, 1.5e-3)]
    assert sizes == [1024, 64]
    assert auto.for_provider("CPUExecutionProvider", None, 2e-3 / 300).max_batch == 256
    assert auto.for_provider("CPUExecutionProvider", 500, 1e-7).max_batch == 500
    assert auto.for_provider("CUDAExecutionProvider", queue_windows=1000).max_batch == 1000
    said = build_config(
        {"batch": {"max_batch": "auto", "pipeline_depth": 3}}, base_dir=tmp_path, env={}
    ).batch
    assert said.for_provider("CUDAExecutionProvider").pipeline_depth == 3
    fixed = build_config({"batch": {"max_batch": 256}}, base_dir=tmp_path, env={}).batch
    assert fixed.for_provider("CUDAExecutionProvider").max_batch == 256
    assert fixed.for_provider("CPUExecutionProvider", None, 1e-7).max_batch == 256
    with pytest.raises(ConfigError, match="max_batch must be an integer"):
        build_config({"batch": {"max_batch": "big"}}, base_dir=tmp_path, env={})


# Every key of every section with a value of the wrong type and one out of range: each is an
# error with a one-line reason naming the key. (Paths that must exist are covered above.)
BAD_VALUES: dict[str, dict[str, list[object]]] = {
    "mqtt": {
        "host": [1, ""],
        "port": ["1883", 0],
        "protocol": [5.0, 3],
        "client_id": [1, "x" * 257, "a\nb"],
        "username": [1, "u" * 257],
        "password_file": [1, "no-such-file"],
        "password_env": [1, "NOPE_NOT_SET"],
        "tls": ["yes"],
        "ca_file": [1, "no-such.crt"],
        "cert_file": [1, "no-such.crt"],
        "key_file": [1, "no-such.key"],
        "topic_prefix": [1, "", "a/b", "a+"],
        "share_group": [1, "a/b"],
        "qos": [True, 2],
        "session_expiry_s": [1.5, -1, 1 << 32],
        "receive_maximum": ["many", 0, 65536],
        "max_inflight_out": [1.0, 0, 65536],
        "max_packet_bytes": ["1M", 1023, 268_435_456],
        "keepalive_s": [30.0, 4, 65536],
        "reconnect_min_s": ["x", 0, math.inf, math.nan],
        "reconnect_max_s": ["x", -1.0, math.inf],
    },
    "model": {
        "path": [1, ""],
        "threshold": ["high", math.inf],
        "provider": [1, "tpu"],
        "intra_op_threads": [1.0, -1, 1025],
        "graph_optimization": [1, "max"],
        "watch_s": ["x", -1, math.inf, math.nan],
    },
    "batch": {
        "max_batch": [1.5, 0, 65537],
        "max_wait_ms": ["x", -1, math.inf, 60_001],
        "pipeline_depth": [1.0, 0, 65],
    },
    "alerts": {
        "min_consecutive": [1.0, 0, 1_000_001],
        "cooldown_s": ["x", -1, math.inf],
        "publish_scores": [1],
        "storm_windows": [1.0, -1, 1_000_001],
        "storm_fleet_windows": ["x", -1, 10_000_001],
        "storm_share": ["x", 0, 1.5, math.nan],
    },
    "limits": {
        "max_payload_bytes": [1.0, 63, 268_435_456],
        "max_windows_per_message": ["x", 0, 65536],
        "queue_windows": [1.0, 10, 10_000_001],
        "max_abs_sample": ["x", 0, -1.0, 1e39, math.inf],
    },
    "streams": {
        "enabled": ["yes", 1],
        "windows": ["no"],
        "share_group": [1, "a/b", "g#"],
        "partition": [1, "x", "2/2", "-1/2", "1/0"],
        "idle_forget_s": ["x", 0, -1.0],
        "max_devices": [1.5, 0],
        "max_chunk_s": [0, 601],
        "min_fs": ["x", 0, -5.0],
        "max_fs": ["x", 50.0],
    },
    "metrics": {"host": [1], "port": ["9100", -1, 65536]},
    "service": {
        "instance_id": [1, "a/b", "i" * 129],
        "drain_timeout_s": ["x", 0, math.inf, 3601],
        "log_format": [1, "xml"],
        "log_level": [1, "trace"],
    },
}


def test_the_bad_value_table_covers_every_key() -> None:
    for section in dataclasses.fields(Config):
        names = {f.name for f in dataclasses.fields(getattr(Config(), section.name))}
        assert set(BAD_VALUES[section.name]) == names - {"password"}, section.name


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [(s, k, v) for s, keys in BAD_VALUES.items() for k, values in keys.items() for v in values],
)
def test_a_bad_value_for_any_key_is_one_line_naming_it(
    tmp_path: Path, section: str, key: str, value: object
) -> None:
    raw: dict[str, dict[str, object]] = {section: {key: value}}
    if key == "password_file" and isinstance(value, str):
        raw["mqtt"]["username"] = "u"
    if section == "metrics" and key == "host":
        raw["metrics"]["port"] = 9100
    with pytest.raises(ConfigError) as err:
        build_config(raw, base_dir=tmp_path, env={})
    message = str(err.value)
    assert "\n" not in message
    assert f"{section}.{key}" in message or key in message, message


def _every_key() -> list[tuple[str, str, object]]:
    defaults = Config()
    return [
        (section.name, f.name, getattr(getattr(defaults, section.name), f.name))
        for section in dataclasses.fields(Config)
        for f in dataclasses.fields(getattr(defaults, section.name))
        if f.name != "password"
    ]


def _wrong_type(default: object) -> object:
    if isinstance(default, bool):
        return "yes"
    if isinstance(default, int | float):
        return "1"
    return 5


@pytest.mark.parametrize(("section", "key", "default"), _every_key())
def test_a_value_of_the_wrong_type_for_any_key_is_one_line_naming_it(
    section: str, key: str, default: object
) -> None:
    with pytest.raises(ConfigError) as err:
        build_config({section: {key: _wrong_type(default)}}, env={})
    assert str(err.value).startswith(f"{section}.{key} must be "), err.value
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("section", "key"), [(s, k) for s, k, d in _every_key() if isinstance(d, float)]
)
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_non_finite_numbers_are_refused_except_the_documented_nan(
    section: str, key: str, value: float
) -> None:
    if (section, key) == ("model", "threshold") and math.isnan(value):
        assert build_config({section: {key: value}}, env={}).model.threshold_override is None
        return
    with pytest.raises(ConfigError, match=rf"{section}\.{key} must be (a )?finite"):
        build_config({section: {key: value}}, env={})


def test_a_bad_config_stops_the_daemon_with_one_line_and_exit_3(tmp_path: Path) -> None:
    config = tmp_path / "monitor.toml"
    config.write_text('[batch]\nmax_wait_ms = "soon"\n')
    done = subprocess.run(
        [sys.executable, "-m", "monitor", "run", "--config", str(config)],
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 3
    assert done.stderr.strip().splitlines() == [
        "ecg-monitor: bad config: batch.max_wait_ms must be a number, not 'soon'"
    ]
