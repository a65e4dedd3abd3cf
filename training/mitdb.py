"""MIT-BIH Arrhythmia Database (or any WFDB database with beat annotations) for training.

Records are read with wfdb (the `train` extra), the lead is picked by its header name (MLII
by default: record 114 has it second), the beats are found and cut FROM THE SIGNAL by the
runtime front end (`monitor.frontend.process_record`, the code the daemon runs live), and
each detected beat is labelled with the AAMI class of the nearest reference annotation
within 150 ms (EC57 matching); a detection with no reference beat is a false detection
(label `-`) and is counted, never silently dropped.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from monitor.frontend import wfdb_io
from monitor.frontend.match import AAMI_CLASS, BEAT_SYMBOLS, Match, match_beats
from monitor.frontend.segment import BeatSet, Segmentation, cut_beats
from monitor.frontend.stream import FrontEnd, process_record
from monitor.frontend.synthetic import synthetic_stream
from training.errors import DataError

# de Chazal et al. (2004) inter-patient division; the paced records 102, 104, 107, 217
# belong to neither half.
DS1 = [
    *("101", "106", "108", "109", "112", "114", "115", "116", "118", "119", "122"),
    *("124", "201", "203", "205", "207", "208", "209", "215", "220", "223", "230"),
]
DS2 = [
    *("100", "103", "105", "111", "113", "117", "121", "123", "200", "202", "210"),
    *("212", "213", "214", "219", "221", "222", "228", "231", "232", "233", "234"),
]
RECORD_SETS: dict[str, tuple[str, ...]] = {"DS1": tuple(DS1), "DS2": tuple(DS2)}
DEFAULT_LEAD = "MLII"
MATCH_WINDOW_S = 0.150

AAMI_CLASSES = ("N", "S", "V", "F", "Q")
FALSE_DETECTION = "-"


@dataclass(frozen=True)
class Record:
    """One lead of one record: signal in millivolts and its reference beats."""

    name: str
    fs: float
    lead: str
    signal_mv: np.ndarray  # float64 [n]
    ref_index: np.ndarray  # int64 [m] reference beat positions (samples)
    ref_label: np.ndarray  # <U1 [m] AAMI class of each reference beat
    ref_symbol: np.ndarray  # <U1 [m] original annotation symbol
    sha256: str  # of the record's .hea/.dat/.atr files

    @property
    def duration_s(self) -> float:
        return self.signal_mv.size / self.fs


def parse_records(text: str, directory: Path | None = None) -> list[str]:
    """`DS1`, `DS2`, `all` (every record with an annotation file in DIRECTORY), record names,
    or a comma list of any of these, in order without duplicates."""
    names: list[str] = []
    for token in (t.strip() for t in text.split(",")):
        if not token:
            continue
        upper = token.upper()
        if upper in RECORD_SETS:
            names.extend(RECORD_SETS[upper])
        elif upper == "ALL":
            if directory is None:
                raise DataError(text, "`all` needs the data directory")
            names.extend(sorted(p.stem for p in Path(directory).glob("*.atr")))
        else:
            names.append(token)
    out = list(dict.fromkeys(names))
    if not out:
        raise DataError(text, "no records named")
    return out


def _sha256(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()


def read_record(directory: Path, name: str, lead: str = DEFAULT_LEAD) -> Record:
    """Read record NAME's lead LEAD (by header name) and its `.atr` beat annotations, with
    the front end's own WFDB reader (format 212/16; the daemon's simulator replays with it)."""
    base = Path(directory) / name
    files = [base.with_name(f"{name}{s}") for s in (".hea", ".dat", ".atr")]
    missing = [p.name for p in files if not p.is_file()]
    if missing:
        raise DataError(str(base), f"missing {', '.join(missing)}")
    rec = wfdb_io.read_record(base)
    signal = np.asarray(rec.lead(lead), dtype=np.float64)
    ann = wfdb_io.read_annotations(base, "atr")
    symbols = np.asarray(ann.symbol, dtype="<U1")
    is_beat = np.isin(symbols, sorted(BEAT_SYMBOLS))
    beat_symbols = symbols[is_beat]
    return Record(
        name=name,
        fs=float(rec.fs),
        lead=lead,
        signal_mv=signal,
        ref_index=np.asarray(ann.sample, dtype=np.int64)[is_beat],
        ref_label=np.array([AAMI_CLASS[s] for s in beat_symbols.tolist()], dtype="<U1"),
        ref_symbol=beat_symbols,
        sha256=_sha256(files),
    )


# ---------------------------------------------------------------- EC57-style matching


def label_detections(
    record: Record, detected: np.ndarray, tolerance_s: float = MATCH_WINDOW_S
) -> tuple[np.ndarray, Match]:
    """AAMI label of each detection's matched reference beat (EC57 one-to-one matching,
    closest pairs first, within TOLERANCE_S), `-` for a false detection."""
    det = np.asarray(detected, dtype=np.int64)
    match = match_beats(record.ref_index, det, round(tolerance_s * record.fs))
    labels = np.full(det.size, FALSE_DETECTION, dtype="<U1")
    labels[match.det_idx] = record.ref_label[match.ref_idx]
    return labels, match


# ---------------------------------------------------------------- beats from the signal


@dataclass(frozen=True)
class RecordBeats:
    """One record's beats as the front end found and cut them, with their reference labels."""

    record: str
    fs: float
    duration_s: float
    r_index: np.ndarray  # int64 [n] detected R peaks of the cut beats
    windows: np.ndarray  # float32 [n, L]
    context: np.ndarray  # float32 [n, k]
    label: np.ndarray  # <U1 [n] AAMI class of the matched reference beat, `-` = false detection
    detections: np.ndarray  # int64 [m] every R peak the detector reported (QRS metrics)
    ref_index: np.ndarray  # int64 reference beats of the record
    ref_label: np.ndarray  # <U1 their AAMI classes
    signal_mv: np.ndarray | None = None  # kept only when asked (strip plots)

    def __len__(self) -> int:
        return int(self.r_index.size)

    def mask(self, keep: np.ndarray) -> RecordBeats:
        return replace(
            self,
            r_index=self.r_index[keep],
            windows=self.windows[keep],
            context=self.context[keep],
            label=self.label[keep],
        )


def _frontend_source_hash() -> str:
    """Hash of the front end's code: cached detections are only reused by the same code."""
    h = hashlib.sha256()
    folder = Path(wfdb_io.__file__).parent
    for name in ("filters.py", "qrs.py", "stream.py"):
        h.update((folder / name).read_bytes())
    return h.hexdigest()[:16]


def detect_record(
    signal_mv: np.ndarray, fs: float, seg: Segmentation
) -> tuple[BeatSet, np.ndarray]:
    """(cut beats, every detected R peak) from one FrontEnd fed the whole record, exactly as
    `process_record` does it (one feed, then flush)."""
    fe = FrontEnd(seg, fs)
    a = fe.feed(0, signal_mv)
    b = fe.flush()
    return BeatSet.concat([a.beats, b.beats], seg), np.concatenate([a.r_peaks, b.r_peaks])


def beats_from_record(
    record: Record, seg: Segmentation, *, cache: Path | None = None, keep_signal: bool = False
) -> RecordBeats:
    """Find and cut the beats of RECORD with the front end and label them.

    The detector output depends only on the signal and the front end's code, so with CACHE
    the R peaks are stored once (keyed by the record's sha256 and the code's hash) and the
    beats are re-cut from them by `cut_beats`, which gives the same beats as the FrontEnd
    (the cutter sees the same peaks and samples; tests/training/test_mitdb.py checks it).
    """
    key = f"{record.name}-{record.lead}-{record.sha256[:16]}-{_frontend_source_hash()}.npy"
    path = cache / key if cache is not None else None
    if path is not None and path.is_file():
        detections = np.load(path)
        beats = cut_beats(record.signal_mv, record.fs, detections, seg)
    else:
        beats, detections = detect_record(record.signal_mv, record.fs, seg)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npy")
            np.save(tmp, detections)
            tmp.replace(path)
    labels, _ = label_detections(record, beats.r_index)
    return RecordBeats(
        record=record.name,
        fs=record.fs,
        duration_s=record.duration_s,
        r_index=beats.r_index,
        windows=beats.windows,
        context=beats.context,
        label=labels,
        detections=detections,
        ref_index=record.ref_index,
        ref_label=record.ref_label,
        signal_mv=record.signal_mv if keep_signal else None,
    )


def default_cache() -> Path:
    return Path(os.environ.get("ECG_CACHE", Path.home() / ".cache" / "ecg-monitor")) / "rpeaks"


@dataclass(frozen=True)
class BeatData:
    """Beats of several records (a `mitdb:` or `stream-synthetic` spec), kept per record."""

    name: str
    spec: str
    sha256: str
    segmentation: Segmentation
    records: tuple[RecordBeats, ...]

    def fingerprint(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "spec": self.spec,
            "sha256": self.sha256,
            "protocol": "records",
            "records": [r.record for r in self.records],
            "seed": 0,
        }

    def select(self, names: Sequence[str]) -> list[RecordBeats]:
        wanted = set(names)
        return [r for r in self.records if r.record in wanted]


def load_mitdb(
    directory: Path,
    records: str,
    seg: Segmentation,
    *,
    lead: str = DEFAULT_LEAD,
    cache: Path | None = None,
    keep_signal: bool = False,
    spec: str | None = None,
) -> BeatData:
    """Read, detect, cut and label every record of RECORDS (see `parse_records`)."""
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise DataError(str(directory), "no such directory")
    names = parse_records(records, directory)
    out, h = [], hashlib.sha256()
    for name in names:
        rec = read_record(directory, name, lead)
        h.update(rec.sha256.encode())
        out.append(beats_from_record(rec, seg, cache=cache, keep_signal=keep_signal))
    return BeatData(
        name="mitdb",
        spec=spec or f"mitdb:{directory}",
        sha256=h.hexdigest(),
        segmentation=seg,
        records=tuple(out),
    )


# ---------------------------------------------------------------- synthetic continuous stream

SYNTHETIC_STREAM_DEFAULT_MIN = 30.0
SYNTHETIC_STREAM_RECORDS = 6
# Ground-truth kinds of monitor.frontend.synthetic -> AAMI-like classes: premature = S,
# wide QRS (ventricular-like) = V, ST shift and inverted T = Q (abnormal, no AAMI class).
SYNTHETIC_AAMI = {"normal": "N", "premature": "S", "wide": "V", "st": "Q", "inverted_t": "Q"}


def synthetic_records(minutes: float, seed: int = 0, fs: float = 360.0) -> list[Record]:
    """SYNTHETIC_STREAM_RECORDS continuous synthetic 'patients' (different heart rates and
    amplitudes) of MINUTES / SYNTHETIC_STREAM_RECORDS each, their R peaks as reference."""
    per = max(0.5, minutes / SYNTHETIC_STREAM_RECORDS) * 60.0
    out = []
    rng = np.random.default_rng(seed)
    for i in range(SYNTHETIC_STREAM_RECORDS):
        stream = synthetic_stream(
            per,
            fs,
            seed=seed * 1000 + i,
            hr_bpm=float(rng.uniform(55, 95)),
            amplitude=float(rng.uniform(0.7, 1.4)),
            anomaly_rate=0.05,
        )
        labels = np.array([SYNTHETIC_AAMI[k] for k in stream.kind_names()], dtype="<U1")
        sha = hashlib.sha256(np.ascontiguousarray(stream.signal_mv).tobytes()).hexdigest()
        out.append(
            Record(
                name=f"syn{i:02d}",
                fs=fs,
                lead="synthetic",
                signal_mv=stream.signal_mv,
                ref_index=stream.r_peaks.astype(np.int64),
                ref_label=labels,
                ref_symbol=labels,
                sha256=sha,
            )
        )
    return out


def load_stream_synthetic(
    arg: str, seg: Segmentation, *, seed: int = 0, keep_signal: bool = False, spec: str = ""
) -> BeatData:
    """`stream-synthetic[:MINUTES]`: the continuous generator, beats cut by the front end,
    labels from its ground truth."""
    try:
        minutes = float(arg) if arg else SYNTHETIC_STREAM_DEFAULT_MIN
    except ValueError:
        raise DataError(spec, f"stream-synthetic minutes {arg!r} is not a number") from None
    if not 1.0 <= minutes <= 24 * 60:
        raise DataError(spec, f"stream-synthetic minutes must be in [1, 1440], got {minutes}")
    records = synthetic_records(minutes, seed)
    h = hashlib.sha256()
    out = []
    for rec in records:
        h.update(rec.sha256.encode())
        out.append(beats_from_record(rec, seg, keep_signal=keep_signal))
    return BeatData("stream-synthetic", spec, h.hexdigest(), seg, tuple(out))


def is_beat_spec(spec: str) -> bool:
    """Whether SPEC names continuous records (beats found by the front end)."""
    kind = spec.partition(":")[0]
    return kind in ("mitdb", "stream-synthetic")


def load_beat_data(
    spec: str,
    seg: Segmentation,
    *,
    records: str | None = None,
    lead: str = DEFAULT_LEAD,
    seed: int = 0,
    keep_signal: bool = False,
    cache: Path | None = None,
) -> BeatData:
    """`mitdb:DIR` (with RECORDS, default DS1 when present else all) or
    `stream-synthetic[:MINUTES]` (RECORDS picks among syn00..syn05)."""
    kind, _, arg = spec.partition(":")
    if kind == "mitdb":
        if not arg:
            raise DataError(spec, "mitdb needs a directory: mitdb:DIR")
        directory = Path(arg).expanduser()
        if records is None:
            records = "DS1" if all((directory / f"{r}.atr").is_file() for r in DS1) else "all"
        return load_mitdb(
            directory,
            records,
            seg,
            lead=lead,
            cache=cache if cache is not None else default_cache(),
            keep_signal=keep_signal,
            spec=spec,
        )
    if kind == "stream-synthetic":
        data = load_stream_synthetic(arg, seg, seed=seed, keep_signal=keep_signal, spec=spec)
        if records:
            names = parse_records(records)
            unknown = sorted(set(names) - {r.record for r in data.records})
            if unknown:
                raise DataError(spec, f"no records {unknown} (has syn00..syn05)")
            data = replace(data, records=tuple(data.select(names)))
        return data
    raise DataError(spec, "not a continuous-record spec (mitdb:DIR or stream-synthetic[:MIN])")


def split_records(names: Sequence[str], folds: int, seed: int = 0) -> list[list[str]]:
    """Leave-records-out folds: NAMES shuffled by SEED and dealt round-robin into FOLDS."""
    if not 2 <= folds <= len(names):
        raise DataError("folds", f"need 2 <= folds <= {len(names)} records, got {folds}")
    order = list(names)
    np.random.default_rng(seed).shuffle(order)
    return [sorted(order[i::folds]) for i in range(folds)]


# ---------------------------------------------------------------- in-process scoring


def score_record(
    model_path: Path, signal_mv: np.ndarray, fs: float
) -> tuple[np.ndarray, np.ndarray]:
    """(R-peak indices, scores) of one record: monitor.frontend.process_record with the
    model's own `ecg.segmentation`, then the ONNX model through ONNX Runtime (float32), as
    the daemon's engine scores a stream."""
    from training.onnx_scoring import OnnxModel  # noqa: PLC0415

    model = OnnxModel(Path(model_path))
    if model.segmentation is None:
        raise DataError(str(model_path), "not a stream model (no ecg.segmentation)")
    beats = process_record(np.asarray(signal_mv, dtype=np.float64), fs, model.segmentation)
    if len(beats) == 0:
        return beats.r_index, np.zeros(0, dtype=np.float32)
    scores, _ = model.score(beats.windows, context=beats.context)
    return beats.r_index, scores
