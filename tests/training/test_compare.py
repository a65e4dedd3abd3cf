"""`ecg-train compare`: FLOP counting against hand counts, the table, and a tiny real run."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from training import cli, compare
from training.errors import TrainingError


@pytest.fixture(autouse=True)
def _restore_torch_threads() -> Iterator[None]:
    """The commands set torch's process-wide thread count; give it back after each test."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def hand_built_graph(path: Path, length: int = 140, hidden: int = 4) -> Path:
    """windows [B, L] -> MatMul(L x 32) -> Gemm(transB, 32 -> 16); and an LSTM over L steps."""
    rng = np.random.default_rng(0)

    def init(name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.normal(size=shape).astype(np.float32), name)

    nodes = [
        helper.make_node("MatMul", ["windows", "w1"], ["h1"]),
        helper.make_node("Gemm", ["h1", "w2", "b2"], ["h2"], transB=1),
        helper.make_node("Unsqueeze", ["windows", "axis2"], ["seq"]),
        helper.make_node("Transpose", ["seq"], ["seq_t"], perm=[1, 0, 2]),
        helper.make_node("LSTM", ["seq_t", "W", "R"], ["Y"], hidden_size=hidden),
    ]
    graph = helper.make_graph(
        nodes,
        "hand",
        [helper.make_tensor_value_info("windows", TensorProto.FLOAT, ["batch", length])],
        [
            helper.make_tensor_value_info("h2", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("Y", TensorProto.FLOAT, None),
        ],
        [
            init("w1", (length, 32)),
            init("w2", (16, 32)),
            init("b2", (16,)),
            init("W", (1, 4 * hidden, 1)),
            init("R", (1, 4 * hidden, hidden)),
            numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_onnx_flops_matches_a_hand_count(tmp_path: Path) -> None:
    path = hand_built_graph(tmp_path / "hand.onnx")
    total, counts = compare.onnx_flops(path, 140)
    by_op = {c.op_type: c.flops for c in counts}
    assert by_op["MatMul"] == 2 * 140 * 32
    assert by_op["Gemm"] == 2 * 32 * 16
    # 140 steps x 4 gates x hidden 4 x (input 1 + hidden 4) multiply-adds
    assert by_op["LSTM"] == 2 * 140 * 4 * 4 * (1 + 4)
    assert total == sum(by_op.values())


def test_ort_throughput_is_positive(tmp_path: Path) -> None:
    path = hand_built_graph(tmp_path / "hand.onnx")
    windows = np.zeros((10, 140), dtype=np.float32)
    assert compare.ort_throughput(path, windows, batch=64, seconds=0.05) > 0


def test_parse_variants() -> None:
    known = ["dense", "vae", "lstm"]
    assert compare.parse_variants("all", known) == known
    assert compare.parse_variants("lstm, dense,lstm", known) == ["lstm", "dense"]
    with pytest.raises(TrainingError, match="pca"):
        compare.parse_variants("dense,pca", known)


def test_markdown_table_has_a_row_per_variant() -> None:
    rows = [
        {"variant": "dense", "roc_auc": 0.98765, "ort_cpu_windows_per_s": 123456.7, "params": 1},
        {"variant": "vae", "roc_auc": 0.5},
    ]
    lines = compare.markdown_table(rows).splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("| variant | ROC AUC |")
    assert "| dense | 0.9877 |" in lines[2] and "123,457" in lines[2]
    assert all(line.count("|") == lines[0].count("|") for line in lines)


def test_markdown_table_shows_a_failed_variant_and_why() -> None:
    rows = [{"variant": "lstm", "roc_auc": 0.9, "error": "parity 1.2e-4 > 1e-4"}]
    text = compare.markdown_table(rows)
    assert "| lstm | 0.9000 | — |" in text
    assert "- lstm: parity 1.2e-4 > 1e-4" in text


def test_compare_end_to_end_on_synthetic(tmp_path: Path) -> None:
    """Two variants, two epochs: table, JSON, run dirs and ONNX files, dense FLOPs by hand."""
    out = tmp_path / "report"
    rc = cli.main(
        ["compare", "--data", "synthetic:200", "--variants", "dense,lstm", "--epochs", "2",
         "--latent-dim", "4", "--out", str(out), "--device", "cpu", "--threads", "1", "--quiet",
         "--timing-seconds", "0.1"]
    )  # fmt: skip
    assert rc == 0
    report = json.loads((out / "compare.json").read_text())
    rows = {r["variant"]: r for r in report["variants"]}
    assert set(rows) == {"dense", "lstm"}
    for row in rows.values():
        assert 0.0 <= row["roc_auc"] <= 1.0 and row["ort_cpu_windows_per_s"] > 0
        assert Path(row["onnx"]).is_file() and (Path(row["run_dir"]) / "metrics.json").is_file()
    # dense: Linear 140->h, h->4, 4->h, h->140; FLOPs = 2 x weights of the matrices
    hidden = rows["dense"]["config"]["options"].get("hidden") or 128
    dense_flops = 2 * (140 * hidden + hidden * 4 + 4 * hidden + hidden * 140)
    assert rows["dense"]["mflop_per_window"] == pytest.approx(dense_flops / 1e6)
    assert rows["lstm"]["mflop_per_window"] > rows["dense"]["mflop_per_window"]
    # the exported graph does the work the torch modules do: two independent counts agree
    for row in rows.values():
        assert row["mflop_per_window"] == pytest.approx(row["mflop_torch_modules"])
    table = (out / "compare.md").read_text()
    assert "| dense |" in table and "| lstm |" in table


def test_compare_rejects_unknown_variant(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = cli.main(
        ["compare", "--data", "synthetic:60", "--variants", "pca", "--out", str(tmp_path)]
    )
    assert rc == 2
    assert "pca" in capsys.readouterr().err
