"""ONNX Runtime engine: load a model, check it against the model contract, run one batch.

The provider is chosen by opening a real session and running it: CUDA (with IO binding) when
it truly loads and runs, CPU otherwise. onnxruntime objects never leave this module.
"""

from __future__ import annotations

import math
import time
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
    context_size: int = 0  # k of the optional `context` input; 0 = the model has none
    p_values: PValues | None = None  # from ecg.calibration's scores; None: alerts say null


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

    session: Any = None
    use_cuda = False
    if provider in ("auto", "cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        session, use_cuda, why = _try_cuda(ort, spath, opts)
        if not use_cuda:
            if provider == "cuda":
                raise ModelLoadError(spath, f"provider cuda requested but {why}")
            log.info("cuda_unavailable", reason=why, path=spath)
            session = None
    elif provider == "cuda":
        raise ModelLoadError(spath, "provider cuda requested but this onnxruntime has no CUDA")
    if session is None:
        try:
            session = ort.InferenceSession(spath, opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own Fail/InvalidGraph/... types
            raise ModelLoadError(spath, f"onnxruntime cannot load it: {_one_line(e)}") from None

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
        cpu = ort.InferenceSession(spath, opts, providers=["CPUExecutionProvider"])
        info = _check_contract(spath, cpu, "CPUExecutionProvider")
        model = Model(cpu, info, io_binding=False)
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


def _try_cuda(ort: Any, path: str, opts: Any) -> tuple[Any, bool, str]:
    """A session on CUDA that really runs there, or the reason it does not."""
    try:
        session = ort.InferenceSession(
            path, opts, providers=["CUDAExecutionProvider", "CPUExecutionProvider"]
        )
    except Exception as e:
        return None, False, f"CUDA session failed: {_one_line(e)}"
    if "CUDAExecutionProvider" not in session.get_providers():
        return None, False, "CUDA provider did not load (no GPU or CUDA libraries)"
    return session, True, ""


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
        context_size=context_size,
        p_values=p_values,
    )


def _warm_up(model: Model, batch: int) -> None:
    """Run the model once (and at batch 1) so the first real batch is not slow; check shapes."""
    length = model.info.window_length
    rng = np.random.default_rng(0)
    for n in (max(1, batch), 1):
        x = rng.standard_normal((n, length)).astype(np.float32)
        k = model.info.context_size
        ctx = np.zeros((n, k), np.float32) if k else None
        try:
            out = model.run(x, ctx)
        except Exception as e:
            raise ModelLoadError(model.info.path, f"warm-up run failed: {_one_line(e)}") from None
        if out.reconstruction.shape != (n, length) or out.score.shape != (n,):
            raise ModelLoadError(
                model.info.path,
                f"outputs reconstruction {out.reconstruction.shape} / score {out.score.shape}, "
                f"expected ({n}, {length}) / ({n},)",
            )
