"""The daemon's TOML config: documented defaults, strict keys, paths and secrets."""

from __future__ import annotations

import dataclasses
import math
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
    assert Path(cfg.model.path) == (ROOT / "models" / "ecg-synthetic-dense.onnx").resolve()
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
    """`max_batch`/`pipeline_depth` default to "auto": 64/2 on CPU, 4096/4 on CUDA (never
    above queue_windows); explicit numbers are kept for every provider."""
    auto = build_config({}, base_dir=tmp_path, env={}).batch
    assert (auto.max_batch, auto.pipeline_depth) == (AUTO, AUTO)
    cpu, cuda = (
        auto.for_provider("CPUExecutionProvider"),
        auto.for_provider("CUDAExecutionProvider"),
    )
    assert (cpu.max_batch, cpu.pipeline_depth) == (64, 2)
    assert (cuda.max_batch, cuda.pipeline_depth) == (4096, 4)
    assert auto.for_provider("CUDAExecutionProvider", queue_windows=1000).max_batch == 1000
    said = build_config(
        {"batch": {"max_batch": "auto", "pipeline_depth": 3}}, base_dir=tmp_path, env={}
    ).batch
    assert said.for_provider("CUDAExecutionProvider").pipeline_depth == 3
    fixed = build_config({"batch": {"max_batch": 256}}, base_dir=tmp_path, env={}).batch
    assert fixed.for_provider("CUDAExecutionProvider").max_batch == 256
    with pytest.raises(ConfigError, match="max_batch must be an integer"):
        build_config({"batch": {"max_batch": "big"}}, base_dir=tmp_path, env={})
