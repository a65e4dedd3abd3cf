"""A deterministic corpus of hostile window messages (topic, payload) for fuzzing the daemon end
to end: every format, sizes at and around every limit, float extremes, lying headers, bad
device ids. Seeded, so a failure names a payload that can be replayed.

Only payloads the daemon's own ingest rejects are kept (a mutation can leave a payload valid);
each comes with the reject code ingest gives it, which the running daemon must publish.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from monitor.alerts import Reject
from monitor.ingest import Ingest
from monitor.wire import HEADER, MAGIC, U64_MAX, encode_binary, encode_json

Gen = Callable[[np.random.Generator], bytes]


@dataclass(frozen=True)
class Hostile:
    topic: str
    payload: bytes
    code: str  # the reject code the daemon must answer with
    reject_topic: str  # where it must answer
    kind: str  # which generator made it


@dataclass(frozen=True)
class Limits:
    window_length: int = 140
    max_bytes: int = 1 << 20
    max_windows: int = 4096
    broker_packet: int = 1_049_600


def _valid(rng: np.random.Generator, lim: Limits) -> bytes:
    count = int(rng.integers(1, 4))
    x = rng.normal(0, 1, (count, lim.window_length)).astype(np.float32)
    seq, ts = int(rng.integers(0, 2**40)), float(rng.uniform(0, 2e9))
    if rng.random() < 0.5:
        return encode_binary(seq, ts, x, float(rng.choice([0.0, 140.0])))
    return encode_json(seq, ts, x[0] if count == 1 else x, 140.0 if rng.random() < 0.5 else None)


def _mutate(data: bytes, rng: np.random.Generator) -> bytes:
    b = bytearray(data)
    for _ in range(int(rng.integers(1, 7))):
        i = int(rng.integers(0, max(len(b), 1)))
        op = int(rng.integers(0, 5))
        if op == 0 and b:
            b[i] ^= 1 << int(rng.integers(0, 8))
        elif op == 1 and b:
            b[i] = int(rng.choice([0, 0x7F, 0x80, 0xFF, ord("["), ord('"'), ord("N"), ord("e")]))
        elif op == 2:
            b[i:i] = rng.bytes(int(rng.integers(1, 9)))
        elif op == 3 and b:
            del b[i : i + int(rng.integers(1, 9))]
        else:
            b[i:i] = b[i : i + int(rng.integers(1, 65))]
    return bytes(b)


def _lying_header(rng: np.random.Generator, lim: Limits) -> bytes:
    L = lim.window_length
    choices = [
        (1, 1, L + 1, 0.0, 0.0, 4 * L),  # length says one more than the body holds
        (1, 2, L, 0.0, 0.0, 4 * L),  # count says 2, body holds 1
        (1, 0, L, 0.0, 0.0, 0),  # count 0
        (2, 1, L, 0.0, 0.0, 4 * L),  # unknown version
        (1, lim.max_windows + 1, L, 0.0, 0.0, 4 * L),  # count over the limit, tiny body
        (1, 0xFFFF, 0xFFFFFFFF, 0.0, 0.0, 64),  # a body of 2**50 bytes claimed
        (1, 1, L, float("inf"), 0.0, 4 * L),  # ts inf
        (1, 1, L, float("nan"), 0.0, 4 * L),  # ts nan
        (1, 1, L, 0.0, -140.0, 4 * L),  # fs negative
        (1, 1, L, 0.0, float("nan"), 4 * L),  # fs nan
        (1, 2, L, 0.0, 1e-45, 8 * L),  # fs so small window times overflow
        (1, 1, L - 1, 0.0, 0.0, 4 * (L - 1)),  # consistent, wrong window length
    ]
    version, count, length, ts, fs, body = choices[int(rng.integers(0, len(choices)))]
    seq = (0, U64_MAX)[int(rng.integers(0, 2))] if rng.random() < 0.2 else 1
    header = HEADER.pack(MAGIC, version, count, length, seq, ts, fs)
    if seq == U64_MAX and count == 1 and version == 1 and length == L:
        header = HEADER.pack(MAGIC, 1, 2, L, U64_MAX, 0.0, 0.0)  # seq + 1 overflows u64
        body = 8 * L
    return header + np.zeros(body // 4, np.float32).tobytes()


def _extreme_floats(rng: np.random.Generator, lim: Limits) -> bytes:
    L = lim.window_length
    alternating = np.where(np.arange(L) % 2 == 0, 3e38, -3e38)
    values = [
        np.full(L, 3.4e38),
        np.full(L, -3.4e38),
        alternating,
        np.full(L, 1e30),
        np.full(L, -1e7),
        np.where(np.arange(L) == int(rng.integers(0, L)), 2e6, 0.0),  # one sample out of range
        np.full(L, np.nan),
        np.full(L, np.inf),
    ]
    x = values[int(rng.integers(0, len(values)))].astype(np.float32)
    if rng.random() < 0.5:
        return encode_binary(1, 1.0, np.stack([rng.normal(0, 1, L).astype(np.float32), x]))
    return encode_json(1, 1.0, x)


def _json_literals(rng: np.random.Generator, lim: Limits) -> bytes:
    """Numbers JSON allows that float32 or the daemon does not, in every field."""
    number = str(
        rng.choice(["1e309", "-1e309", "1e39", "3.5e38", "NaN", "Infinity", "-Infinity", "9" * 60])
    )
    where = str(rng.choice(["seq", "ts", "fs", "sample"]))
    fields = {"seq": "0", "ts": "0", "fs": "null", "sample": "0"}
    fields[where] = number
    samples = ", ".join([fields["sample"]] * lim.window_length)
    head = f'"seq": {fields["seq"]}, "ts": {fields["ts"]}, "fs": {fields["fs"]}'
    return f'{{{head}, "samples": [{samples}]}}'.encode()


def _json_types(rng: np.random.Generator, lim: Limits) -> bytes:
    L = lim.window_length
    good: dict[str, object] = {"seq": 1, "ts": 1.0, "samples": [0.0] * L}
    bad_values: list[tuple[str, object]] = [
        ("seq", -1),
        ("seq", "1"),
        ("seq", 1.5),
        ("seq", True),
        ("seq", U64_MAX + 1),
        ("ts", "now"),
        ("ts", None),
        ("fs", -1),
        ("fs", "140"),
        ("samples", "0,0,0"),
        ("samples", [[0.0] * L]),
        ("samples", [True] * L),
        ("samples", [None] * L),
        ("samples", [0.0] * (L + 1)),
        ("samples", []),
        ("windows", []),
        ("windows", [[0.0] * L, [0.0] * (L - 1)]),
        ("windows", [[0.0] * L, "x"]),
    ]
    key, value = bad_values[int(rng.integers(0, len(bad_values)))]
    obj = dict(good)
    obj[key] = value
    if key == "windows":
        del obj["samples"]
    if rng.random() < 0.1:
        return json.dumps([obj]).encode()  # an array, not an object
    return json.dumps(obj).encode()


def _deep(rng: np.random.Generator, lim: Limits) -> bytes:
    opener = [b"[", b'{"a":', b'{"seq": 0, "ts": 0, "samples": ['][int(rng.integers(0, 3))]
    depth = int(rng.integers(1000, 200_000 // len(opener)))  # past the recursion limit
    return opener * depth + b"0"


def _non_utf8(rng: np.random.Generator, lim: Limits) -> bytes:
    prefix = [b"", b"{", b'{"seq": 0, "ts": 0, "samples": ["'][int(rng.integers(0, 3))]
    return prefix + b"\xff\xfe" + rng.bytes(int(rng.integers(0, 32)))


def sized(lim: Limits, topic: str) -> list[bytes]:
    """Payloads at and around the daemon's size limit and the broker's packet limit."""
    # the largest a device can send: mosquitto counts the remaining length plus one byte
    room = lim.broker_packet - 1 - (2 + len(topic.encode()) + 2 + 1)
    out = []
    for n in (lim.max_bytes - 1, lim.max_bytes, lim.max_bytes + 1, room - 1, room):
        out.append((b'{"seq": 0, "ts": 0, "samples": [' + b"0," * n)[:n])
    out.append(encode_binary(0, 0.0, np.zeros((1, lim.window_length + 1), np.float32)) + bytes(3))
    return out


def corpus(n: int, seed: int = 0, lim: Limits | None = None) -> Iterator[Hostile]:
    """At least n hostile messages, each on its own device's topic, with the expected code."""
    lim = lim or Limits()
    rng = np.random.default_rng(seed)
    ingest = Ingest("ecg", lim.window_length, lim.max_bytes, lim.max_windows)
    gens: dict[str, Gen] = {
        "random": lambda r: r.bytes(int(r.integers(0, 512))),
        "magic": lambda r: MAGIC + r.bytes(int(r.integers(0, 64))),
        "mutated": lambda r: _mutate(_valid(r, lim), r),
        "truncated": lambda r: (v := _valid(r, lim))[: int(r.integers(0, len(v)))],
        "header": lambda r: _lying_header(r, lim),
        "extreme": lambda r: _extreme_floats(r, lim),
        "literal": lambda r: _json_literals(r, lim),
        "types": lambda r: _json_types(r, lim),
        "deep": lambda r: _deep(r, lim),
        "utf8": lambda r: _non_utf8(r, lim),
    }
    # deep nesting is big (up to 200 kB): one in 41
    names = [k for k in gens if k != "deep"] * 5 + ["deep"]
    made = 0
    i = 0
    good = encode_json(0, 0.0, np.zeros(lim.window_length, np.float32))
    messages: list[tuple[str, bytes, str]] = [
        (f"ecg/{level}{j if level else ''}/window", good, "device")
        for j, level in enumerate(["bad$id", "d" * 65, "é", "a b", "", "x" * 300])
    ]
    messages += [
        (f"ecg/sized-{k}/window", p, "sized")
        for k, p in enumerate(sized(lim, "ecg/sized-0/window"))
    ]
    for topic, payload, kind in messages:
        result = ingest(topic, payload, 0.0)
        assert isinstance(result, Reject), (topic, payload[:80])
        yield Hostile(topic, payload, result.code, ingest.reject_topic(result), kind)
        made += 1
    while made < n:
        kind = names[i % len(names)]
        payload = gens[kind](rng)
        topic = f"ecg/h{i}/window"
        i += 1
        result = ingest(topic, payload, 0.0)
        if isinstance(result, Reject):
            yield Hostile(topic, payload, result.code, ingest.reject_topic(result), kind)
            made += 1
