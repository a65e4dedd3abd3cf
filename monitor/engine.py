"""ONNX Runtime engine: load a model, check it against the model contract, run one batch.

The file is parsed and checked on the CPU provider first, so a broken model is reported as
one, whatever the host. The provider is then chosen by opening a real session and running it:
CUDA (with IO binding) when it truly loads and runs, CPU otherwise. The CUDA attempt is quiet:
what onnxruntime prints about a missing GPU library becomes the reason in our own
`cuda_unavailable` event. onnxruntime objects never leave this module.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import structlog

from monitor.beats import zscore  # the same normalisation training uses
from monitor.calibration import CalibrationError, PValues
from monitor.errors import ModelLoadError

log = structlog.get_logger("monitor.engine")

INPUT = "windows"
CONTEXT = "context"  # optional second input of stream models: float32 [batch, k]
OUTPUTS = ("reconstruction", "score")
PREPROCESS = ("none", "zscore")
_OPT_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What the daemon knows about a loaded model (from its metadata_props)."""

    path: str
    name: str
    version: str
    window_length: int
    threshold: float  # the model's own ecg.threshold
    preprocess: str
    provider: str  # "CUDAExecutionProvider" or "CPUExecutionProvider"
    metadata: dict[str, str] = field(default_factory=dict)
    p_values: PValues | None = None  # from ecg.calibration's scores; None: alerts say null
    context_size: int = 0  # k of the optional `context` input; 0 = the model has none


@dataclass(frozen=True, slots=True)
class Inference:
    """One batch through the model: what the model compared, and its outputs."""

    inputs: np.ndarray  # float32 [n, L], after preprocessing
    reconstruction: np.ndarray  # float32 [n, L]
    score: np.ndarray  # float32 [n]
    seconds: float


class Model:
    """A loaded, checked and warmed-up model. `run` is called from one worker thread."""

    def __init__(self, session: Any, info: ModelInfo, io_binding: bool) -> None:
        self._session = session
        self.info = info
        self._io_binding = io_binding
        # inference seconds per window at the warm-up batch (None until warmed up): what
        # `max_batch = "auto"` sizes CPU batches by
        self.seconds_per_window: float | None = None

    def run(self, windows: np.ndarray, context: np.ndarray | None = None) -> Inference:
        """Score a float32 [n, L] batch (one session.run); `context` [n, k] feeds the model's
        context input when it has one (zeros would be a silent lie, so it is required then)."""
        t0 = time.perf_counter()
        x = np.ascontiguousarray(windows, dtype=np.float32)
        if self.info.preprocess == "zscore":
            x = zscore(x)
        feeds = {INPUT: x}
        if self.info.context_size:
            if context is None or context.shape != (x.shape[0], self.info.context_size):
                raise ValueError(
                    f"model needs context [{x.shape[0]}, {self.info.context_size}], got "
                    f"{None if context is None else context.shape}"
                )
            feeds[CONTEXT] = np.ascontiguousarray(context, dtype=np.float32)
        if self._io_binding:
            binding = self._session.io_binding()
            for name, value in feeds.items():
                binding.bind_cpu_input(name, value)
            for name in OUTPUTS:
                binding.bind_output(name, "cpu")
            self._session.run_with_iobinding(binding)
            recon, score = binding.copy_outputs_to_cpu()
        else:
            recon, score = self._session.run(list(OUTPUTS), feeds)
        return Inference(
            inputs=x,
            reconstruction=np.asarray(recon, dtype=np.float32),
            score=np.asarray(score, dtype=np.float32).reshape(-1),
            seconds=time.perf_counter() - t0,
        )


def load_model(
    path: str | Path,
    *,
    provider: str = "auto",
    intra_op_threads: int = 0,
    graph_optimization: str = "all",
    warmup_batch: int = 64,
) -> Model:
    """Open, check and warm up a model; ModelLoadError with the reason if anything is off."""
    spath = str(path)
    if not Path(spath).is_file():
        raise ModelLoadError(spath, "no such file")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = getattr(
        ort.GraphOptimizationLevel, _OPT_LEVELS[graph_optimization]
    )
    if intra_op_threads:
        opts.intra_op_num_threads = intra_op_threads
    opts.log_severity_level = 3  # ORT's own fallback warnings are reported by us instead

    # Parse and check on CPU first: a broken file is a broken file, not a CUDA failure.
    try:
        cpu_session = ort.InferenceSession(spath, opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own Fail/InvalidGraph/InvalidProtobuf types
        raise ModelLoadError(spath, f"onnxruntime cannot load it: {_one_line(e)}") from None
    _check_contract(spath, cpu_session, "CPUExecutionProvider")

    session: Any = cpu_session
    use_cuda = False
    if provider in ("auto", "cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        cuda_session, why = _try_cuda(spath, opts)
        if cuda_session is not None:
            session, use_cuda = cuda_session, True
        elif provider == "cuda":
            raise ModelLoadError(spath, f"provider cuda requested but {why}")
        else:
            log.info("cuda_unavailable", reason=why, path=spath)
    elif provider == "cuda":
        raise ModelLoadError(spath, "provider cuda requested but this onnxruntime has no CUDA")

    info = _check_contract(
        spath, session, "CUDAExecutionProvider" if use_cuda else "CPUExecutionProvider"
    )
    model = Model(session, info, io_binding=use_cuda)
    try:
        _warm_up(model, warmup_batch)
    except ModelLoadError as e:
        if not (use_cuda and provider == "auto"):
            raise
        # CUDA loaded but cannot run this model (memory, kernels): CPU, said out loud
        log.warning("cuda_warmup_failed", reason=e.reason, path=spath)
        info = _check_contract(spath, cpu_session, "CPUExecutionProvider")
        model = Model(cpu_session, info, io_binding=False)
        _warm_up(model, warmup_batch)
    log.info(
        "model_loaded",
        path=spath,
        model=info.name,
        model_version=info.version,
        provider=info.provider,
        window_length=info.window_length,
        threshold=info.threshold,
        preprocess=info.preprocess,
    )
    return model


def _try_cuda(path: str, opts: Any) -> tuple[Any, str]:
    """A session on CUDA that really runs there, or None and the reason it does not.

    onnxruntime reports a missing CUDA library on stderr (in red) before falling back to CPU;
    with its logging raised to errors-only and stderr captured for the attempt, that text
    becomes our reason instead.
    """
    quiet = ort.SessionOptions()
    quiet.graph_optimization_level = opts.graph_optimization_level
    quiet.intra_op_num_threads = opts.intra_op_num_threads
    quiet.log_severity_level = _ORT_ERROR
    captured: list[str] = []
    try:
        with _ort_default_severity(_ORT_ERROR), _stderr_captured(captured):
            session = ort.InferenceSession(
                path, quiet, providers=["CUDAExecutionProvider", "CPUExecutionProvider"]
            )
    except Exception as e:
        return None, f"CUDA session failed: {_one_line(e)}"
    if "CUDAExecutionProvider" not in session.get_providers():
        detail = _ort_reason(captured)
        return None, "CUDA provider did not load" + (
            f": {detail}" if detail else " (no GPU or CUDA libraries)"
        )
    return session, ""


_ORT_WARNING, _ORT_ERROR = 2, 3  # onnxruntime severities; 2 is its default
_ORT_LINE = re.compile(r"\[[VIWEF]:onnxruntime:")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_stderr_lock = threading.Lock()


@contextlib.contextmanager
def _ort_default_severity(level: int) -> Iterator[None]:
    """onnxruntime's process-wide default logger at `level`, back to its default after."""
    ort.set_default_logger_severity(level)
    try:
        yield
    finally:
        ort.set_default_logger_severity(_ORT_WARNING)


@contextlib.contextmanager
def _stderr_captured(lines: list[str]) -> Iterator[None]:
    """Send file descriptor 2 to a temporary file; onnxruntime's lines go into `lines`.

    Anything else written meanwhile (another thread's log line) is written back to stderr
    afterwards, so nothing is lost, only delayed by the length of the attempt.
    """
    with _stderr_lock, tempfile.TemporaryFile() as tmp:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(tmp.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
        finally:
            os.close(saved)
        tmp.seek(0)
        text = tmp.read().decode(errors="replace")
    others = []
    for line in text.splitlines(keepends=True):
        if _ORT_LINE.search(line) or not _ANSI.sub("", line).strip():
            lines.append(_ANSI.sub("", line).strip())
        else:
            others.append(line)
    if others:
        os.write(2, "".join(others).encode())


def _ort_reason(lines: list[str]) -> str:
    """The message of onnxruntime's first error line, without timestamp and source location."""
    for line in lines:
        if "[E:onnxruntime:" in line:
            message = line.split("] ", 1)[-1]
            return _one_line(Exception(message.rsplit(" : ", 1)[-1]))
    return ""


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:300] or type(e).__name__


def _check_contract(path: str, session: Any, provider: str) -> ModelInfo:
    inputs = session.get_inputs()
    names = [i.name for i in inputs]
    if names not in ([INPUT], [INPUT, CONTEXT]):
        raise ModelLoadError(
            path, f"inputs {names}, expected ['{INPUT}'] or ['{INPUT}', '{CONTEXT}']"
        )
    inp = inputs[0]
    context_size = 0
    if len(inputs) == 2:
        ctx = inputs[1]
        if ctx.type != "tensor(float)" or len(ctx.shape) != 2 or not isinstance(ctx.shape[1], int):
            raise ModelLoadError(
                path, f"input {CONTEXT} is {ctx.type} {ctx.shape}, not float [batch, k]"
            )
        context_size = int(ctx.shape[1])
    if inp.type != "tensor(float)" or len(inp.shape) != 2:
        raise ModelLoadError(path, f"input {INPUT} is {inp.type} {inp.shape}, not float [batch, L]")
    outputs = {o.name: o for o in session.get_outputs()}
    missing = [n for n in OUTPUTS if n not in outputs]
    if missing:
        raise ModelLoadError(path, f"missing output(s) {missing}")
    meta: dict[str, str] = dict(session.get_modelmeta().custom_metadata_map)

    def need(key: str) -> str:
        value = meta.get(key, "").strip()
        if not value:
            raise ModelLoadError(path, f"metadata_props has no {key}")
        return value

    try:
        length = int(need("ecg.window_length"))
    except ValueError:
        raise ModelLoadError(path, "ecg.window_length is not an integer") from None
    if length <= 0:
        raise ModelLoadError(path, f"ecg.window_length {length} <= 0")
    if isinstance(inp.shape[1], int) and inp.shape[1] != length:
        raise ModelLoadError(path, f"input length {inp.shape[1]} != ecg.window_length {length}")
    try:
        threshold = float(need("ecg.threshold"))
    except ValueError:
        raise ModelLoadError(path, "ecg.threshold is not a number") from None
    if not math.isfinite(threshold):
        raise ModelLoadError(path, f"ecg.threshold {threshold} is not finite")
    preprocess = meta.get("ecg.preprocess", "none").strip() or "none"
    if preprocess not in PREPROCESS:
        raise ModelLoadError(path, f"ecg.preprocess {preprocess!r} is not one of {PREPROCESS}")
    try:
        p_values = PValues.from_metadata(meta)
    except CalibrationError as e:
        raise ModelLoadError(path, f"ecg.calibration: {e}") from None
    return ModelInfo(
        path=path,
        name=need("ecg.model_name"),
        version=need("ecg.model_version"),
        window_length=length,
        threshold=threshold,
        preprocess=preprocess,
        provider=provider,
        metadata=meta,
        p_values=p_values,
        context_size=context_size,
    )


def _warm_up(model: Model, batch: int) -> None:
    """Run the model once (and at batch 1) so the first real batch is not slow; check shapes;
    then time two more runs of the batch (the faster one sets `seconds_per_window`)."""
    length = model.info.window_length
    rng = np.random.default_rng(0)
    n = max(1, batch)
    k = model.info.context_size
    runs = []
    for size in (n, 1, n, n):
        x = rng.standard_normal((size, length)).astype(np.float32)
        ctx = np.zeros((size, k), np.float32) if k else None
        try:
            out = model.run(x, ctx)
        except Exception as e:
            raise ModelLoadError(model.info.path, f"warm-up run failed: {_one_line(e)}") from None
        if out.reconstruction.shape != (size, length) or out.score.shape != (size,):
            raise ModelLoadError(
                model.info.path,
                f"outputs reconstruction {out.reconstruction.shape} / score {out.score.shape}, "
                f"expected ({size}, {length}) / ({size},)",
            )
        runs.append(out.seconds)
    model.seconds_per_window = min(runs[2:]) / n
