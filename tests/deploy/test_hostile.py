"""Nothing a device sends stops the daemon (issue 9), against a real mosquitto with the shipped
limits or the shipped config itself: a reject bigger than the broker's packet limit, windows
of extreme floats with and without score reports, and a device taking the daemon's client id."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from monitor.wire import encode_binary, encode_json
from tests.brokers import Mosquitto, shipped_limits, shipped_limits_config
from tests.deploy.clients import BrokerClient
from tests.deploy.conftest import USERS, SecureBroker
from tests.hostile import corpus
from tests.monitor.daemon import Collector, Daemon, Publisher, wait_online, write_config
from tests.onnx_models import LENGTH, build_model, windows

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

BROKER_LIMIT = int(shipped_limits()["max_packet_size"])  # 1,049,600 in deploy/mosquitto


@pytest.fixture(scope="module")
def limited_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """An anonymous broker with the shipped packet, in-flight and queue limits."""
    broker = Mosquitto(
        data_dir=tmp_path_factory.mktemp("limited"), config_text=shipped_limits_config()
    ).start()
    yield broker
    broker.stop()


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return build_model(tmp_path / "model.onnx", threshold=20.0)


def start_daemon(daemons: list[Daemon], config: Path, col: Collector, instance_id: str) -> Daemon:
    d = Daemon(config).start()
    daemons.append(d)
    try:
        wait_online(col, instance_id, 60)
    except AssertionError:
        raise AssertionError(f"daemon not online:\n{d.output()[-3000:]}") from None
    return d


def config_for(tmp_path: Path, port: int, model: Path, instance: str, **sections: Any) -> Path:
    sections.setdefault("service", {})["instance_id"] = instance
    return write_config(tmp_path / f"{instance}.toml", port, model, **sections)


def rejects_by_device(col: Collector) -> dict[str, dict[str, Any]]:
    with col._lock:
        return {t.split("/")[1]: d for t, d in col.messages if t.endswith("/rejected")}


def events(daemon: Daemon) -> list[str]:
    return [str(e.get("event")) for e in daemon.events()]


# ------------------------------------------------------------------ 1. packet limit


@pytest.mark.parametrize(
    ("protocol", "max_packet_bytes"),
    [(5, 268_435_455), (311, BROKER_LIMIT)],
    ids=["mqtt5-limit-from-connack", "mqtt311-limit-from-config"],
)
def test_a_reject_larger_than_the_broker_packet_limit_is_cut_and_the_daemon_goes_on(
    *,
    tmp_path: Path,
    limited_broker: Mosquitto,
    model: Path,
    daemons: list[Daemon],
    protocol: int,
    max_packet_bytes: int,
) -> None:
    """Before: the ~1.4 MB reject of a 1,048,577-byte window got the daemon disconnected, and
    paho resent it on every reconnect; valid windows after it were never alerted."""
    instance = f"pk{protocol}"
    config = config_for(
        tmp_path,
        limited_broker.port,
        model,
        instance,
        mqtt={"protocol": protocol, "max_packet_bytes": max_packet_bytes},
    )
    col = Collector(limited_broker.port, ["ecg/+/alert", "ecg/+/rejected", "ecg-monitor/+/status"])
    daemon = start_daemon(daemons, config, col, instance)
    huge = encode_json(0, 0.0, windows(1)[0]) + b" " * 1_048_577  # over max_payload_bytes
    huge = huge[:1_048_577]
    bad_json = b"{" + b"x" * 800_000  # under max_payload_bytes; its base64 is ~1.07 MB
    exact = b"[" * (1 << 20)  # exactly max_payload_bytes: bad_json, reject cut
    cases = {"big1": huge, "big2": bad_json, "big3": exact}
    anomalous = windows(len(cases), np.ones(len(cases), bool), seed=5)
    pub = Publisher(limited_broker.port)
    for i, (device, payload) in enumerate(cases.items()):
        pub.publish(f"ecg/{device}/window", payload)
        pub.publish("ecg/after/window", encode_json(i, float(i), anomalous[i]))
    pub.close()
    col.wait_for(
        lambda: len(col.of("/alert")) >= len(cases) and len(rejects_by_device(col)) >= len(cases),
        60,
        f"alerts after the big rejects:\n{daemon.output()[-3000:]}",
    )
    rejects = rejects_by_device(col)
    for device, payload in cases.items():
        r = rejects[device]
        assert r["code"] == ("too_large" if device == "big1" else "bad_json")
        assert r["truncated"] is True and r["payload_bytes"] == len(payload)
        copy = base64.b64decode(r["payload_b64"])
        assert payload.startswith(copy) and len(copy) > 700_000  # a real copy, cut to fit
        # PUBLISH: fixed header 1 + 3, topic 2 + len, packet id 2, MQTT 5 properties 1
        header = 8 + (protocol == 5) + len(f"ecg/{device}/rejected")
        assert len(json.dumps(r, separators=(",", ":"))) + header <= BROKER_LIMIT
    assert sorted(a["seq"] for a in col.of("/alert")) == list(range(len(cases)))
    seen = events(daemon)
    assert "mqtt_disconnected" not in seen and "publish_too_large" not in seen
    col.close()


# ------------------------------------------------------------------ 2./3. extreme floats

F32_MAX = 3.4e38


def extreme_windows() -> dict[str, np.ndarray]:
    alternating = np.where(np.arange(LENGTH) % 2 == 0, 3e38, -3e38).astype(np.float32)
    return {
        "pmax": np.full(LENGTH, F32_MAX, np.float32),
        "nmax": np.full(LENGTH, -F32_MAX, np.float32),
        "alt": alternating,
        "e30": np.full(LENGTH, 1e30, np.float32),
        "e7": np.full(LENGTH, 1e7, np.float32),
    }


def extreme_payloads() -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for name, x in extreme_windows().items():
        out[f"j-{name}"] = encode_json(0, 0.0, x)
        out[f"b-{name}"] = encode_binary(0, 0.0, np.stack([x, x]))  # two windows in one frame
    return out


def test_huge_finite_samples_are_rejected_out_of_range_never_passed_as_normal(
    tmp_path: Path, limited_broker: Mosquitto, model: Path, daemons: list[Daemon]
) -> None:
    """Before: windows of +-3.4e38, 1e30, alternating +-3e38 were scored (NaN/inf) and produced
    neither an alert nor a reject. Default config."""
    instance = "oor"
    config = config_for(tmp_path, limited_broker.port, model, instance)
    col = Collector(limited_broker.port, ["ecg/+/alert", "ecg/+/rejected", "ecg-monitor/+/status"])
    start_daemon(daemons, config, col, instance)
    cases = extreme_payloads()
    anomalous = windows(len(cases), np.ones(len(cases), bool), seed=6)
    pub = Publisher(limited_broker.port)
    for i, (device, payload) in enumerate(cases.items()):
        pub.publish(f"ecg/{device}/window", payload)
        pub.publish("ecg/after/window", encode_json(i, float(i), anomalous[i]))
    pub.close()
    col.wait_for(
        lambda: len(col.of("/alert")) >= len(cases) and len(rejects_by_device(col)) >= len(cases),
        30,
        "every extreme window rejected and every valid one alerted",
    )
    rejects = rejects_by_device(col)
    for device, payload in cases.items():
        assert rejects[device]["code"] == "out_of_range", rejects[device]
        assert base64.b64decode(rejects[device]["payload_b64"]) == payload
    assert sorted(a["seq"] for a in col.of("/alert")) == list(range(len(cases)))
    assert all(a["device_id"] == "after" for a in col.of("/alert"))
    col.close()


def test_windows_the_model_scores_inf_are_rejected_and_scoring_goes_on_with_scores_published(
    tmp_path: Path, limited_broker: Mosquitto, model: Path, daemons: list[Daemon]
) -> None:
    """Before: with publish_scores = true two windows of +-3.4e38 stopped scoring for good.
    The ingest bound is lifted to the float32 maximum, so the model itself overflows: such a
    window is an out_of_range reject (with its payload) and a null in the score report."""
    instance = "inf"
    config = config_for(
        tmp_path,
        limited_broker.port,
        model,
        instance,
        alerts={"publish_scores": True},
        limits={"max_abs_sample": 3.4028234663852886e38},
    )
    col = Collector(
        limited_broker.port,
        ["ecg/+/alert", "ecg/+/rejected", "ecg/+/score", "ecg-monitor/+/status"],
    )
    daemon = start_daemon(daemons, config, col, instance)
    cases = {k: v for k, v in extreme_payloads().items() if "e30" not in k and "e7" not in k}
    anomalous = windows(len(cases), np.ones(len(cases), bool), seed=7)
    pub = Publisher(limited_broker.port)
    for i, (device, payload) in enumerate(cases.items()):
        pub.publish(f"ecg/{device}/window", payload)
        pub.publish("ecg/after/window", encode_json(i, float(i), anomalous[i]))
    pub.close()
    col.wait_for(
        lambda: len(col.of("/alert")) >= len(cases) and len(rejects_by_device(col)) >= len(cases),
        30,
        f"scoring went on after the overflowing windows:\n{daemon.output()[-3000:]}",
    )
    rejects = rejects_by_device(col)
    for device, payload in cases.items():
        assert rejects[device]["code"] == "out_of_range"
        assert "not finite" in rejects[device]["reason"]
        assert base64.b64decode(rejects[device]["payload_b64"]) == payload
    col.wait_for(lambda: len(col.of("/score")) >= 2 * len(cases), 30, "score reports")
    for report in col.of("/score"):
        if report["device_id"] == "after":
            assert all(isinstance(s, float) for s in report["scores"])
        else:
            assert report["scores"] == [None] * report["count"]
    assert sorted(a["seq"] for a in col.of("/alert")) == list(range(len(cases)))
    assert "batch_failed" not in events(daemon)
    col.close()


# ------------------------------------------------------------------ 4. client-id takeover


def secure_config(tmp_path: Path, sb: SecureBroker, model: Path, user: str, **extra: Any) -> Path:
    pw = tmp_path / f"{user}.pw"
    pw.write_text(USERS[user] + "\n")
    mqtt = {
        "host": "localhost",
        "port": sb.tls_port,
        "tls": True,
        "ca_file": str(sb.ca),
        "username": user,
        "password_file": str(pw),
        "reconnect_min_s": 0.2,
        "reconnect_max_s": 1.0,
        **extra.pop("mqtt", {}),
    }
    return write_config(
        tmp_path / f"{user}.toml",
        sb.tls_port,
        model,
        mqtt=mqtt,
        alerts={"publish_scores": True},
        **extra,
    )


def scored(ops: BrokerClient) -> set[tuple[str, int]]:
    out = set()
    with ops._cond:
        messages = list(ops.messages)
    for topic, payload in messages:
        if topic.endswith("/score"):
            r = json.loads(payload)
            out |= {(r["device_id"], r["seq"] + i) for i in range(r["count"])}
    return out


def test_a_device_with_the_daemons_client_id_cannot_take_it_over(
    tmp_path: Path, fresh_secure_broker: SecureBroker, model: Path, daemons: list[Daemon]
) -> None:
    """Before: a device user connecting with the daemon's client id (clean start) knocked the
    daemon off and wiped its persistent session: QoS 1 windows queued in it were lost."""
    sb = fresh_secure_broker
    daemon_client_id = "ecg-monitor-prod"
    config = secure_config(tmp_path, sb, model, "ecg-monitor", mqtt={"client_id": daemon_client_id})
    ops = BrokerClient(sb.tls_port, "ops", USERS["ops"], sb.ca)
    assert ops.connect() == "Success"
    ops.subscribe("ecg/+/score")
    ops.subscribe("ecg-monitor/+/status")
    daemons.append(daemon := Daemon(config).start())
    assert ops.wait(lambda: b'"online"' in b"".join(ops.received()), 60), daemon.output()[-3000:]

    dev = BrokerClient(sb.tls_port, "d2", USERS["d2"], sb.ca)
    assert dev.connect() == "Success"
    n = 3000
    x = windows(1, seed=8)[0]
    stop = threading.Event()
    takeovers: list[str] = []

    def attack() -> None:  # d1 connects again and again with the daemon's client ids
        ids = [daemon_client_id, "ecg-monitor", "ecg-monitor-2"]
        i = 0
        while not stop.is_set():
            c = BrokerClient(sb.tls_port, "d1", USERS["d1"], sb.ca, client_id=ids[i % 3])
            takeovers.append(c.connect())
            time.sleep(0.05)
            c.close()
            i += 1

    attacker = threading.Thread(target=attack)
    attacker.start()
    mids = [dev.publish_nowait("ecg/d2/window", encode_binary(s, float(s), x)) for s in range(n)]
    assert dev.wait_acked(mids, 120)
    want = {("d2", s) for s in range(n)}
    ops.wait(lambda: scored(ops) >= want, 90)
    stop.set()
    attacker.join()
    missing = want - scored(ops)
    assert not missing, f"{len(missing)} of {n} windows lost, e.g. {sorted(missing)[:5]}"
    assert takeovers and all(t == "Success" for t in takeovers)  # the attempts were real
    seen = events(daemon)
    assert "mqtt_disconnected" not in seen, daemon.output()[-3000:]
    for c in (dev, ops):
        c.close()


def test_two_instances_with_their_own_users_share_the_stream_on_the_shipped_broker(
    tmp_path: Path, fresh_secure_broker: SecureBroker, model: Path, daemons: list[Daemon]
) -> None:
    """Client id = username on the shipped broker: instances of one share group need their own
    users, and then split the windows between them, none lost."""
    sb = fresh_secure_broker
    ops = BrokerClient(sb.tls_port, "ops", USERS["ops"], sb.ca)
    assert ops.connect() == "Success"
    ops.subscribe("ecg/+/score")
    ops.subscribe("ecg-monitor/+/status")
    started = []
    for user in ("ecg-monitor", "ecg-monitor-2"):
        config = secure_config(
            tmp_path, sb, model, user, mqtt={"share_group": "g"}, service={"instance_id": user}
        )
        daemons.append(d := Daemon(config).start())
        started.append(d)
    for user, d in zip(("ecg-monitor", "ecg-monitor-2"), started, strict=True):
        online = f'"instance_id":"{user}"'.encode()
        assert ops.wait(lambda o=online: o in b"".join(ops.received()), 60), d.output()[-2000:]
    dev = BrokerClient(sb.tls_port, "d1", USERS["d1"], sb.ca)
    assert dev.connect() == "Success"
    x = windows(1, seed=9)[0]
    n = 1000
    dev.publish_many("ecg/d1/window", [encode_binary(s, float(s), x) for s in range(n)])
    want = {("d1", s) for s in range(n)}
    ops.wait(lambda: scored(ops) >= want, 60)
    assert not want - scored(ops)
    for d in started:  # neither took the other's place
        assert "mqtt_disconnected" not in events(d), d.output()[-2000:]
    for c in (dev, ops):
        c.close()


# ------------------------------------------------------------------ fuzz

FUZZ_N = 10_000
VALID_EVERY = 50  # one valid anomalous window after this many hostile messages


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


@pytest.mark.timeout(300)
def test_fuzz_ten_thousand_hostile_messages_with_valid_windows_in_between(
    tmp_path: Path, limited_broker: Mosquitto, model: Path, daemons: list[Daemon]
) -> None:
    """Every hostile message is rejected with its code and payload (or a cut copy that says
    so), every valid window in between is alerted, the daemon stays up and its memory flat."""
    instance = "fuzz"
    config = config_for(tmp_path, limited_broker.port, model, instance)
    col = Collector(limited_broker.port, ["ecg/+/alert", "ecg/+/rejected", "ecg-monitor/+/status"])
    daemon = start_daemon(daemons, config, col, instance)
    assert daemon.proc is not None
    pid = daemon.proc.pid
    hostile = list(corpus(FUZZ_N, seed=9))
    assert len({h.reject_topic for h in hostile}) == len(hostile)  # one answer per topic
    n_valid = len(hostile) // VALID_EVERY
    valid = windows(n_valid, np.ones(n_valid, bool), seed=10)
    pub = Publisher(limited_broker.port)
    # warm-up: a small corpus first, so the baseline holds what steady state needs (allocator
    # arenas, paho buffers, the largest payloads once)
    warm = list(corpus(200, seed=11))
    for h in warm:
        pub.publish(h.topic.replace("/h", "/w", 1), h.payload)
    pub.flush(60)
    col.wait_for(lambda: len(col.of("/rejected")) >= len(warm), 60, "warm-up rejects")
    rss = [rss_kib(pid)]
    with col._lock:
        col.messages.clear()
    half = len(hostile) // 2
    t0 = time.monotonic()  # memory is read after each half: growth per message shows twice
    for i, h in enumerate(hostile):
        pub.publish(h.topic, h.payload)
        if i % VALID_EVERY == VALID_EVERY - 1:
            k = i // VALID_EVERY
            pub.publish(f"ecg/v{k % 10}/window", encode_binary(k, float(k), valid[k]))
        if i + 1 in (half, len(hostile)):
            pub.flush(120)
            n_rej, n_alert = i + 1, (i + 1) // VALID_EVERY

            def answered(r: int = n_rej, a: int = n_alert) -> bool:
                return len(col.of("/rejected")) >= r and len(col.of("/alert")) >= a

            col.wait_for(answered, 180, f"every message answered:\n{daemon.output()[-2000:]}")
            rss.append(rss_kib(pid))
    elapsed = time.monotonic() - t0
    pub.close()
    peak = rss_kib(pid, "VmHWM")
    with col._lock:
        by_topic = {t: d for t, d in col.messages if t.endswith("/rejected")}
    wrong = []
    for h in hostile:
        r = by_topic.get(h.reject_topic)
        if r is None or r["code"] != h.code:
            wrong.append((h.kind, h.code, r and r["code"], h.payload[:60]))
            continue
        copy = base64.b64decode(r["payload_b64"])
        if r.get("truncated"):
            ok = r["payload_bytes"] == len(h.payload) and h.payload.startswith(copy)
        else:
            ok = copy == h.payload
        if not ok:
            wrong.append((h.kind, h.code, "payload", h.payload[:60]))
    assert not wrong, f"{len(wrong)} of {len(hostile)} answered wrongly, e.g. {wrong[:5]}"
    alerted = {(a["device_id"], a["seq"]) for a in col.of("/alert")}
    assert alerted == {(f"v{k % 10}", k) for k in range(n_valid)}
    assert daemon.proc.poll() is None
    seen = events(daemon)
    for bad in ("mqtt_disconnected", "publish_too_large", "batch_failed", "fatal"):
        assert bad not in seen, bad
    mib = [round(r / 1024) for r in rss]
    print(
        f"fuzz: {len(hostile)} hostile + {n_valid} valid answered in {elapsed:.1f} s; RSS MiB "
        f"after warm-up / half / all: {mib}, peak {peak / 1024:.0f}"
    )
    # the second half adds little: memory follows the in-flight bound, not the message count
    assert mib[2] - mib[1] < 16, f"RSS grew {mib[2] - mib[1]} MiB over the second half"
    assert mib[2] - mib[0] < 128, f"RSS grew {mib[2] - mib[0]} MiB over the run"
    col.close()


def test_two_instances_with_one_user_are_told_why_they_keep_losing_the_connection(
    tmp_path: Path, fresh_secure_broker: SecureBroker, model: Path, daemons: list[Daemon]
) -> None:
    """The shipped broker makes the username the client id: two daemons with one user take
    each other's place, and the daemon names that as the likely cause."""
    sb = fresh_secure_broker
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
    daemons.append(a := Daemon(secure_config(tmp_path / "a", sb, model, "ecg-monitor")).start())
    a.wait_event("ready", 60)
    daemons.append(b := Daemon(secure_config(tmp_path / "b", sb, model, "ecg-monitor")).start())
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        told = [
            e for d in (a, b) for e in d.events() if e.get("event") == "mqtt_session_taken_over"
        ]
        if told:
            break
        time.sleep(0.2)
    assert told, a.output()[-2000:]
    assert "own user" in told[0]["hint"]
