"""Continuous records for training: record sets, EC57 labelling, beats from the front end,
the stream model fit -> ONNX -> evaluate path, and per-beat scores equal to the in-process
(daemon-side) scoring."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from monitor.errors import DataError  # training.errors.DataError subclasses it
from monitor.frontend.segment import BeatCutter, cut_beats
from monitor.frontend.stream import process_record
from tests.conftest import SHARED_DATA
from training import beat_eval
from training.mitdb import (
    DS1,
    DS2,
    Record,
    beats_from_record,
    label_detections,
    load_beat_data,
    parse_records,
    read_record,
    score_record,
    split_records,
    synthetic_records,
)
from training.onnx_scoring import OnnxModel
from training.stream_model import StreamFitConfig, fit_scorer
from training.stream_train import DEFAULT_SEGMENTATION, evaluate_beats, fit_stream

MITDB = SHARED_DATA / "mitdb"
SEG = replace(DEFAULT_SEGMENTATION, window_length=48)


def test_record_sets_and_lists() -> None:
    assert parse_records("DS1") == DS1
    assert parse_records("ds2") == DS2
    assert parse_records("101, 106,101,DS1")[:3] == ["101", "106", "108"]
    assert len(parse_records("DS1,DS2")) == 44
    assert not set(DS1) & set(DS2)
    with pytest.raises(DataError):
        parse_records(" , ")
    with pytest.raises(DataError):
        parse_records("all")


def test_folds_are_by_record_and_cover_each_once() -> None:
    folds = split_records(DS1, 6, seed=0)
    flat = [r for f in folds for r in f]
    assert sorted(flat) == sorted(DS1)
    assert len(flat) == len(set(flat))
    assert {len(f) for f in folds} <= {3, 4}
    with pytest.raises(DataError):
        split_records(["a"], 2)


def _record(ref: list[int], labels: str, fs: float = 360.0) -> Record:
    return Record(
        name="t",
        fs=fs,
        lead="MLII",
        signal_mv=np.zeros(10_000),
        ref_index=np.asarray(ref, dtype=np.int64),
        ref_label=np.array(list(labels), dtype="<U1"),
        ref_symbol=np.array(list(labels), dtype="<U1"),
        sha256="0",
    )


def test_detections_take_the_nearest_reference_within_150_ms() -> None:
    rec = _record([1000, 1300, 1600, 3000], "NVSN")
    # 54 samples = 150 ms at 360 Hz: 3054 is in, 1600+55 is out (a false detection).
    det = np.array([1010, 1290, 1655, 3054, 5000])
    labels, match = label_detections(rec, det)
    assert labels.tolist() == ["N", "V", "-", "N", "-"]
    assert (match.tp, match.fn, match.fp) == (3, 1, 2)


def test_one_reference_is_matched_once() -> None:
    rec = _record([1000], "V")
    labels, _ = label_detections(rec, np.array([990, 1005]))
    assert labels.tolist() == ["-", "V"]  # the closer detection wins, the other is false


def test_median_amp_keeps_amplitude_and_is_chunking_invariant() -> None:
    rec = synthetic_records(2.0, seed=3)[0]
    seg = replace(SEG, local_rr_beats=8)
    whole = cut_beats(rec.signal_mv, rec.fs, rec.ref_index, seg)
    cutter = BeatCutter(rec.fs, seg)
    parts = []
    for a in range(0, rec.signal_mv.size, 997):
        b = a + 997
        peaks = rec.ref_index[(rec.ref_index >= a) & (rec.ref_index < b)]
        parts.append(cutter.feed(rec.signal_mv[a:b], peaks))
    w = np.concatenate([p.windows for p in parts])
    np.testing.assert_array_equal(w, whole.windows)
    np.testing.assert_array_equal(np.concatenate([p.context for p in parts]), whole.context)
    # Doubling the signal leaves median_amp windows unchanged (amplitude is relative to the
    # patient's own beats), while the raw amplitude feature doubles.
    seg2 = replace(seg, context=(*seg.context, "amplitude_mv"))
    one = cut_beats(rec.signal_mv, rec.fs, rec.ref_index, seg2)
    two = cut_beats(2 * rec.signal_mv, rec.fs, rec.ref_index, seg2)
    np.testing.assert_allclose(two.windows, one.windows, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(two.context[:, -1], 2 * one.context[:, -1], rtol=1e-5)


def test_cached_peaks_give_the_front_end_beats(tmp_path: Path) -> None:
    rec = synthetic_records(3.0, seed=1)[2]
    fresh = beats_from_record(rec, SEG)
    beats_from_record(rec, SEG, cache=tmp_path)  # fills the cache
    cached = beats_from_record(rec, SEG, cache=tmp_path)
    assert len(list(tmp_path.iterdir())) == 1
    direct = process_record(rec.signal_mv, rec.fs, SEG)
    for got in (fresh, cached):
        np.testing.assert_array_equal(got.r_index, direct.r_index)
        np.testing.assert_array_equal(got.windows, direct.windows)
        np.testing.assert_array_equal(got.context, direct.context)


def test_stream_synthetic_labels_from_ground_truth() -> None:
    data = load_beat_data("stream-synthetic:6", SEG, records="syn00,syn01")
    assert [r.record for r in data.records] == ["syn00", "syn01"]
    labels = np.concatenate([r.label for r in data.records])
    assert (labels == "N").mean() > 0.8
    assert set(labels.tolist()) <= {"N", "S", "V", "Q", "-"}
    assert data.records[0].windows.shape[1] == 48
    assert data.records[0].context.shape[1] == len(SEG.context)
    with pytest.raises(DataError):
        load_beat_data("stream-synthetic:6", SEG, records="syn09")
    with pytest.raises(DataError):
        load_beat_data("stream-synthetic:x", SEG)


def test_beat_metrics_by_hand() -> None:
    r = beats_from_record(_record([100, 400, 700, 1000], "NNVS"), SEG)
    r = replace(
        r,
        r_index=np.array([100, 400, 700, 1000, 1200]),
        label=np.array(["N", "N", "V", "S", "-"]),
        windows=np.zeros((5, 48), np.float32),
        context=np.zeros((5, 3), np.float32),
    )
    scores = {"t": np.array([1.0, 5.0, 9.0, 2.0, 7.0])}
    m = beat_eval.beat_metrics([r], scores, {"t": 4.0})
    g = m["gross"]
    assert g["false_alarm_rate"] == 0.5  # one of two N beats above 4
    assert g["se_V"] == 1.0 and g["se_S"] == 0.0
    assert g["ppv_V"] == 0.5  # alerts on N or V beats: V, N
    assert g["roc_auc_V"] == 1.0
    assert g["roc_auc_S"] == 0.5  # S=2 between N=1 and N=5
    assert g["false_detections_flagged"] == 1
    assert g["counts"]["-"] == 1


@pytest.fixture(scope="module")
def synthetic_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from training.export import export_run  # noqa: PLC0415

    root = tmp_path_factory.mktemp("stream")
    data = load_beat_data("stream-synthetic:6", SEG)
    cfg = StreamFitConfig(epochs=2, folds=3, latent_dim=4, hidden=16, max_train_beats=2000)
    run = fit_stream(cfg, data, root / "run")
    return run, export_run(run, root / "m.onnx")


def test_fit_writes_cv_and_out_of_fold_calibration(synthetic_model: tuple[Path, Path]) -> None:
    run, _ = synthetic_model
    cv = json.loads((run / "cv.json").read_text())
    assert sorted(r for f in cv["folds"] for r in f) == [f"syn{i:02d}" for i in range(6)]
    cal = json.loads((run / "calibration.json").read_text())
    n_normal = sum(row["counts"]["N"] for row in cv["per_record"].values())
    assert cal["n"] == n_normal  # every record's out-of-fold N scores
    assert cv["gross"]["roc_auc_S"] > 0.9  # premature beats: the RR context term sees them


def test_onnx_has_context_input_and_metadata(synthetic_model: tuple[Path, Path]) -> None:
    _, path = synthetic_model
    model = OnnxModel(path)
    assert model.input_names == ["windows", "context"]
    assert model.segmentation == SEG
    definition = json.loads(model.metadata["ecg.score_definition"])
    assert definition["score"] == model.metadata["ecg.score"] == "l1_sum_plus_rr_context"
    assert json.loads(model.metadata["ecg.trained_on"])["name"] == "stream-synthetic"
    with pytest.raises(Exception, match="context"):
        model.score(np.zeros((2, 48), np.float32))


def test_beats_csv_equals_in_process_scoring(
    synthetic_model: tuple[Path, Path], tmp_path: Path
) -> None:
    _, path = synthetic_model
    out = tmp_path / "beats.csv"
    metrics = evaluate_beats(
        path, "stream-synthetic:6", records="syn04", beats_csv=out, plots_dir=tmp_path / "p"
    )
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == metrics["gross"]["n_beats"] > 0
    rec = synthetic_records(6.0)[4]
    r_index, scores = score_record(path, rec.signal_mv, rec.fs)
    assert [int(r["r_index"]) for r in rows] == r_index.tolist()
    np.testing.assert_allclose([float(r["score"]) for r in rows], scores, rtol=0, atol=1e-4)
    assert metrics["qrs"]["se_150ms"] > 0.95
    assert {Path(p).name for p in metrics["plots"]} == {"score_histogram.png", "strip_syn04.png"}


def test_scorer_without_context_is_plain_l1() -> None:
    seg = replace(SEG, context=())
    data = load_beat_data("stream-synthetic:6", seg, records="syn00,syn01")
    cfg = StreamFitConfig(epochs=1, latent_dim=4, hidden=16)
    scorer, _ = fit_scorer(cfg, list(data.records), seg)
    r = data.records[0]
    s, recon = scorer.score_numpy(r.windows, r.context)
    np.testing.assert_allclose(s, np.abs(r.windows - recon).sum(1), rtol=1e-5)


# ---------------------------------------------------------------- the real database


@pytest.fixture(scope="module")
def mitdb() -> Path:
    if not (MITDB / "114.hea").is_file():
        pytest.skip("../shared/data/mitdb is absent")
    return MITDB


def test_record_114_lead_by_name(mitdb: Path) -> None:
    rec = read_record(mitdb, "114")
    assert rec.lead == "MLII" and rec.fs == 360.0
    v5 = read_record(mitdb, "114", lead="V5")
    assert not np.allclose(rec.signal_mv[:3600], v5.signal_mv[:3600])
    assert rec.ref_index.size == 1879
    with pytest.raises(DataError):
        read_record(mitdb, "114", lead="V1")


def test_beats_cut_from_the_signal_of_a_real_record(mitdb: Path) -> None:
    rec = read_record(mitdb, "119")
    n = round(120 * rec.fs)  # the first two minutes keep the test short
    keep = rec.ref_index < n
    short = replace(
        rec,
        signal_mv=rec.signal_mv[:n],
        ref_index=rec.ref_index[keep],
        ref_label=rec.ref_label[keep],
        ref_symbol=rec.ref_symbol[keep],
    )
    beats = beats_from_record(short, SEG)
    assert len(beats) > 0.95 * keep.sum()
    assert (beats.label == "-").sum() <= 2
    assert {"N", "V"} <= set(beats.label.tolist())  # 119 has ventricular bigeminy
    # Detected, not annotated, positions: within 150 ms of the reference but not all equal.
    assert not np.isin(beats.r_index, short.ref_index).all()
