"""Stream mode end to end against a real mosquitto: continuous chunks in, the daemon's beats and
scores equal the offline front end + the same ONNX model, at least once per beat across
kill -9 and broker restarts, redelivered chunks change nothing."""

from __future__ import annotations

import threading
import time
import tomllib
from pathlib import Path

import numpy as np
import onnxruntime as ort
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from monitor.frontend.segment import Segmentation
from monitor.frontend.stream import process_record
from monitor.frontend.synthetic import synthetic_stream
from monitor.stream_sim import wfdb_recordings
from monitor.stream_wire import encode_stream_binary, encode_stream_json
from monitor.streams import owner_of
from tests.brokers import Mosquitto
from tests.monitor.daemon import Collector, Daemon, Publisher, wait_online, write_config
from tests.onnx_models import build_stream_model

pytestmark = pytest.mark.timeout(300)
FS = 360.0
SEG = Segmentation(context=("pre_rr_s", "local_rr_s"))
THRESHOLD = 58.5


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cal = [50.0 + 0.1 * i for i in range(100)]
    return build_stream_model(
        tmp_path_factory.mktemp("m") / "stream.onnx",
        SEG.to_json(),
        context=2,
        threshold=THRESHOLD,
        calibration_scores=cal,
    )


def signal(seed: int, seconds: float, **kw: float) -> np.ndarray:
    s = synthetic_stream(seconds, FS, seed=seed, anomaly_rate=0.1, **kw)  # type: ignore[arg-type]
    return s.signal_mv.astype(np.float32)


def offline(model: Path, x: np.ndarray) -> dict[int, float]:
    """R-peak index -> score, by the offline path (process_record + the same ONNX model)."""
    beats = process_record(x, FS, SEG)
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    _, score = sess.run(None, {"windows": beats.windows, "context": beats.context})
    return dict(zip(beats.r_index.tolist(), np.asarray(score).tolist(), strict=True))


def chunks(device: str, x: np.ndarray, chunk_s: float = 1.0, json_every: int = 0):  # type: ignore[no-untyped-def]
    n = int(chunk_s * FS)
    for k, start in enumerate(range(0, x.size, n)):
        part = x[start : start + n]
        ts = 1_764_000_000.0 + start / FS
        use_json = json_every and k % json_every == 0
        payload = (
            encode_stream_json(start, ts, FS, part)
            if use_json
            else encode_stream_binary(start, ts, FS, part)
        )
        yield f"ecg/{device}/stream", payload


def config(tmp: Path, broker: Mosquitto, model: Path, **streams: object) -> Path:
    return write_config(
        tmp / f"mon-{time.monotonic_ns()}.toml",
        broker.port,
        model,
        streams={"enabled": True, "windows": False, "idle_forget_s": 1.5, **streams},
        alerts={"publish_scores": True},
        mqtt={"client_id": "stream-mon", "session_expiry_s": 600},
    )


def scored(col: Collector) -> dict[tuple[str, int], list[float]]:
    out: dict[tuple[str, int], list[float]] = {}
    for r in col.of("/score"):
        assert r["source"] == "stream"
        for seq, sc in zip(r["seqs"], r["scores"], strict=True):
            out.setdefault((r["device_id"], seq), []).append(sc)
    return out


def expect_all(col: Collector, truth: dict[tuple[str, int], float], timeout: float = 120) -> None:
    col.wait_for(lambda: set(truth) <= set(scored(col)), timeout, f"{len(truth)} beats scored")


def check_scores(col: Collector, truth: dict[tuple[str, int], float], exact_set: bool) -> None:
    got = scored(col)
    missing = set(truth) - set(got)
    assert not missing, f"{len(missing)} beats never scored, e.g. {sorted(missing)[:5]}"
    if exact_set:
        assert set(got) == set(truth), sorted(set(got) - set(truth))[:10]
    worst = max(abs(s - truth[k]) for k, ss in got.items() if k in truth for s in ss)
    assert worst <= 1e-4, worst


def test_live_beats_and_scores_equal_offline(
    tmp_path: Path, fresh_mosquitto: Mosquitto, model: Path, daemons: list[Daemon]
) -> None:
    """Four devices (f32 frames, one partly JSON, one with noise bursts and lead-off): the same
    R peaks and scores (|diff| <= 1e-4) as process_record + the model; alerts only above the
    threshold while the signal is good, with the beat fields of DESIGN.md."""
    cfg = config(tmp_path, fresh_mosquitto, model)
    col = Collector(fresh_mosquitto.port, ["ecg/#", "ecg-monitor/#"])
    daemons.append(d := Daemon(cfg).start())
    wait_online(col, str(tomllib.loads(cfg.read_text())["service"]["instance_id"]))
    signals = {
        "d0": signal(1, 60),
        "d1": signal(2, 60),
        "d2": signal(3, 60, artefacts=2, lead_off=1),
        "d3": signal(4, 45),
    }
    truth = {(dev, r): s for dev, x in signals.items() for r, s in offline(model, x).items()}
    pub = Publisher(fresh_mosquitto.port)
    for dev, x in signals.items():
        for topic, payload in chunks(dev, x, json_every=3 if dev == "d1" else 0):
            pub.publish(topic, payload)
    pub.flush()
    expect_all(col, truth)
    time.sleep(0.5)
    check_scores(col, truth, exact_set=True)
    assert all(len(v) == 1 for v in scored(col).values())  # no redelivery: each beat once
    alerts = col.of("/alert")
    assert alerts, "the threshold is set so that some beats alert"
    for a in alerts:
        key = (a["device_id"], a["seq"])
        assert a["source"] == "stream" and truth[key] > THRESHOLD
        assert abs(a["score"] - truth[key]) <= 1e-4
        assert a["ts"] == pytest.approx(1_764_000_000.0 + a["seq"] / FS)
        assert (
            0 < a["p_value"] <= 1 and a["rr_s"] > 0 and a["hr_bpm"] == pytest.approx(60 / a["rr_s"])
        )
    quality = [q for q in col.of("/quality")]
    assert {q["device_id"] for q in quality if q["state"] == "good"} == set(signals)
    assert any(q["state"] in ("noisy", "lead_off") for q in quality if q["device_id"] == "d2")
    del d


MITDB = Path(__file__).resolve().parents[3] / "shared" / "data" / "mitdb"


@pytest.mark.skipif(not (MITDB / "101.hea").is_file(), reason="../shared/data/mitdb is absent")
def test_live_beats_equal_offline_on_mitdb_records(
    tmp_path: Path, fresh_mosquitto: Mosquitto, model: Path, daemons: list[Daemon]
) -> None:
    """DS1 records 101, 106, 109 (first 90 s, lead MLII) replayed as devices in int16 ADC
    units with the record's gain: the daemon's beats and scores equal the offline run on the
    same decoded signal."""
    recs = wfdb_recordings(MITDB, ["101", "106", "109"])
    cfg = config(tmp_path, fresh_mosquitto, model)
    col = Collector(fresh_mosquitto.port, ["ecg/#", "ecg-monitor/#"])
    daemons.append(Daemon(cfg).start())
    wait_online(col, str(tomllib.loads(cfg.read_text())["service"]["instance_id"]))
    gain = 200.0
    pub = Publisher(fresh_mosquitto.port)
    truth: dict[tuple[str, int], float] = {}
    for rec in recs:
        x = rec.signal_mv[: int(90 * rec.fs)]
        units = np.rint(x.astype(np.float64) * gain).astype(np.int16)
        decoded = (units.astype(np.float32) / np.float32(gain)).astype(np.float32)
        dev = f"mit{rec.name}"
        truth.update({(dev, r): sc for r, sc in offline(model, decoded).items()})
        n = int(rec.fs)
        for start in range(0, x.size, n):
            payload = encode_stream_binary(
                start,
                1_764_000_000.0 + start / rec.fs,
                rec.fs,
                units[start : start + n],
                fmt="i16",
                gain=gain,
            )
            pub.publish(f"ecg/{dev}/stream", payload)
    pub.flush()
    expect_all(col, truth)
    time.sleep(0.5)
    check_scores(col, truth, exact_set=True)


SHIPPED_MITDB_MODEL = Path(__file__).resolve().parents[2] / "models" / "mitdb-ds1-dense.onnx"


@pytest.mark.skipif(not (MITDB / "101.hea").is_file(), reason="../shared/data/mitdb is absent")
def test_live_beats_equal_ecg_train_evaluate_with_the_shipped_mitdb_model(
    tmp_path: Path, fresh_mosquitto: Mosquitto, daemons: list[Daemon]
) -> None:
    """The shipped MIT-BIH model (windows + RR context) on DS1 records 119 and 208 (first
    60 s) sent as f32 chunks of 0.5 s: the daemon's R peaks are those in the `--beats` CSV of
    `ecg-train evaluate` on the same 60 s record and its scores equal within 1e-4."""
    import csv  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    seconds, records = 60, ["119", "208"]
    recs = wfdb_recordings(MITDB, records)
    cut = tmp_path / "mitdb"
    cut.mkdir()
    for rec in recs:  # the same 60 s as WFDB records (format 16), for ecg-train evaluate
        x = rec.signal_mv[: int(seconds * rec.fs)]
        units = np.rint(np.asarray(x, np.float64) * 200.0).astype("<i2")
        (cut / f"{rec.name}.dat").write_bytes(units.tobytes())
        (cut / f"{rec.name}.hea").write_text(
            f"{rec.name} 1 {rec.fs:g} {units.size}\n{rec.name}.dat 16 200 16 0 0 0 0 MLII\n"
        )
        src = (MITDB / f"{rec.name}.atr").read_bytes()
        (cut / f"{rec.name}.atr").write_bytes(src)
    beats_csv = tmp_path / "beats.csv"
    subprocess.run(
        [sys.executable, "-m", "training", "evaluate", str(SHIPPED_MITDB_MODEL), "--data",
         f"mitdb:{cut}", "--records", ",".join(records), "--beats", str(beats_csv),
         "--json", str(tmp_path / "eval.json")],
        check=True, capture_output=True, timeout=240,
    )  # fmt: skip
    truth: dict[tuple[str, int], float] = {}
    with beats_csv.open() as f:
        for row in csv.DictReader(f):
            truth[(f"mit{row['record']}", int(row["r_index"]))] = float(row["score"])
    assert len(truth) > 100
    cfg = config(tmp_path, fresh_mosquitto, SHIPPED_MITDB_MODEL)
    col = Collector(fresh_mosquitto.port, ["ecg/#", "ecg-monitor/#"])
    daemons.append(Daemon(cfg).start())
    wait_online(col, str(tomllib.loads(cfg.read_text())["service"]["instance_id"]))
    pub = Publisher(fresh_mosquitto.port)
    for rec in recs:
        units = np.rint(np.asarray(rec.signal_mv[: int(seconds * rec.fs)], np.float64) * 200.0)
        x = (units / 200.0).astype(np.float32)
        n = int(rec.fs / 2)
        for start in range(0, x.size, n):
            ts = 1_764_000_000.0 + start / rec.fs
            payload = encode_stream_binary(start, ts, rec.fs, x[start : start + n])
            pub.publish(f"ecg/mit{rec.name}/stream", payload)
    pub.flush()
    expect_all(col, truth)
    time.sleep(0.5)
    check_scores(col, truth, exact_set=True)


def test_redelivered_chunks_change_nothing(
    tmp_path: Path, fresh_mosquitto: Mosquitto, model: Path, daemons: list[Daemon]
) -> None:
    """Every chunk of a live stream published a second time: no new beat, score or alert."""
    cfg = config(tmp_path, fresh_mosquitto, model, idle_forget_s=600.0)
    col = Collector(fresh_mosquitto.port, ["ecg/#", "ecg-monitor/#"])
    daemons.append(Daemon(cfg).start())
    wait_online(col, str(tomllib.loads(cfg.read_text())["service"]["instance_id"]))
    x = signal(7, 40)
    truth = {("r0", r): s for r, s in offline(model, x).items()}
    pub = Publisher(fresh_mosquitto.port)
    sent = list(chunks("r0", x))
    for topic, payload in sent:
        pub.publish(topic, payload)
    pub.flush()
    # all but the beats only a flush finds (the stream is still live)
    live = {k: v for k, v in truth.items() if k[1] < x.size - 4 * FS}
    expect_all(col, live)
    time.sleep(1.0)
    before = (len(col.of("/score")), len(col.of("/alert")), dict(scored(col)))
    for topic, payload in sent[5:] + sent[5:]:
        pub.publish(topic, payload)
    pub.flush()
    # a marker chunk after the replays: once its effect is seen, the replays were processed
    pub.publish("ecg/r0/stream", b"not a chunk")
    pub.flush()
    col.wait_for(lambda: len(col.of("/rejected")) >= 1, 30, "marker reject")
    assert (len(col.of("/score")), len(col.of("/alert")), dict(scored(col))) == before


class SessionCollector(Collector):
    """A Collector on a persistent MQTT 5 session (fixed client id, QoS 1, session expiry):
    what is published while a broker restarts reaches it afterwards."""

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id="collector-kill9", protocol=paho.MQTTv5
        )
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_connect = lambda c, *a: c.subscribe([(t, 1) for t in self.topics])
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 600
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.connect("127.0.0.1", self.port, clean_start=False, properties=props)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError("collector not subscribed")


def test_kill_9_three_times_and_a_broker_restart_lose_no_beat(
    tmp_path: Path, model: Path, daemons: list[Daemon]
) -> None:
    """20 devices streaming; the daemon is killed with SIGKILL three times mid-stream, then the
    broker is restarted while the daemon works through its backlog: every beat the offline run
    finds is scored (duplicates share (device_id, seq) and the offline score)."""
    broker = Mosquitto(tmp_path / "broker", persistence=True).start()
    col: Collector | None = None
    pub: Publisher | None = None
    try:
        cfg = config(tmp_path, broker, model)
        iid = str(tomllib.loads(cfg.read_text())["service"]["instance_id"])
        signals = {f"k{i:02d}": signal(100 + i, 40) for i in range(20)}
        truth = {(dev, r): s for dev, x in signals.items() for r, s in offline(model, x).items()}
        col = SessionCollector(broker.port, ["ecg/+/score", "ecg-monitor/+/status"])
        d = Daemon(cfg).start()
        daemons.append(d)
        wait_online(col, iid)
        pub = Publisher(broker.port)
        streams = {dev: list(chunks(dev, x)) for dev, x in signals.items()}
        n = max(len(v) for v in streams.values())
        kills = {n // 5, 2 * n // 5, 3 * n // 5}
        for k in range(n):
            for items in streams.values():
                if k < len(items):
                    pub.publish(*items[k])
            pub.flush()
            time.sleep(0.05)
            if k in kills:
                d.stop()  # SIGKILL: nothing drained, nothing acknowledged since the last ack
                d = Daemon(cfg).start()
                daemons.append(d)
                wait_online(col, iid)
        pub.close()
        pub = None
        broker.stop()  # mosquitto writes its persistence file: sessions and their queues
        broker.start()
        expect_all(col, truth, timeout=180)
        check_scores(col, truth, exact_set=False)
        dup = sum(len(v) - 1 for v in scored(col).values())
        assert dup > 0, "the kills happened mid-stream, so some beats were scored twice"
    finally:
        if pub is not None:
            pub.close()
        if col is not None:
            col.close()
        broker.stop()


def test_two_partitioned_instances_share_devices_and_fail_over(
    tmp_path: Path, model: Path, daemons: list[Daemon]
) -> None:
    """streams.partition 0/2 and 1/2 on one mosquitto: every beat scored exactly once, each
    device by the instance crc32 assigns it to; then partition 0's instance is killed (-9) and
    a standby started with partition 0's config (same client id) gets every chunk the broker
    held: no beat lost."""
    broker = Mosquitto(tmp_path / "broker").start()
    col: Collector | None = None
    try:
        cfgs = []
        for i in range(2):
            c = config(tmp_path, broker, model, partition=f"{i}/2")
            text = c.read_text().replace(
                'client_id = "stream-mon"', f'client_id = "streams-p{i}of2"'
            )
            c.write_text(text)
            cfgs.append(c)
        iids = [str(tomllib.loads(c.read_text())["service"]["instance_id"]) for c in cfgs]
        col = SessionCollector(broker.port, ["ecg/+/score", "ecg-monitor/+/status"])
        ds = [Daemon(c).start() for c in cfgs]
        daemons.extend(ds)
        for iid in iids:
            wait_online(col, iid)
        signals = {f"p{i:02d}": signal(200 + i, 40) for i in range(10)}
        owners = {dev: owner_of(dev, 2) for dev in signals}
        assert set(owners.values()) == {0, 1}
        truth = {(dev, r): s for dev, x in signals.items() for r, s in offline(model, x).items()}
        pub = Publisher(broker.port)
        streams = {dev: list(chunks(dev, x)) for dev, x in signals.items()}
        n = max(len(v) for v in streams.values())
        for k in range(n):
            for items in streams.values():
                if k < len(items):
                    pub.publish(*items[k])
            pub.flush()
            time.sleep(0.03)
            if k == n // 2:
                ds[0].stop()  # SIGKILL partition 0's instance
                standby = Daemon(cfgs[0]).start()  # a standby with partition 0's config
                daemons.append(standby)
        pub.close()
        expect_all(col, truth, timeout=180)
        check_scores(col, truth, exact_set=False)
        # before the kill, each device's quality was judged by its owner only
        for i, d in enumerate(ds):
            seen = {e["device_id"] for e in d.events() if e.get("event") == "stream_quality"}
            assert seen and all(owners[dev] == i for dev in seen), (i, seen)
        # partition 1 was never killed: its beats were scored exactly once
        got = scored(col)
        assert all(len(got[k]) == 1 for k in truth if owners[k[0]] == 1)
    finally:
        if col is not None:
            col.close()
        broker.stop()
