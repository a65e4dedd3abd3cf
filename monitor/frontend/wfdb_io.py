"""A small WFDB reader (header, format 212 / 16 signals, MIT annotations): enough for the
MIT-BIH databases without the `wfdb` package, so the simulator can replay records."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from monitor.errors import DataError


@dataclass(frozen=True)
class Record:
    """One WFDB record: `signals_mv[n, channels]` in millivolts, lead names as in the header."""

    name: str
    fs: float
    sig_names: tuple[str, ...]
    signals_mv: np.ndarray
    gains: tuple[float, ...]
    baselines: tuple[int, ...]

    def lead(self, name: str = "MLII") -> np.ndarray:
        """One lead by its header name (record 114 has MLII second)."""
        if name not in self.sig_names:
            raise DataError(self.name, f"no lead {name!r} (has {', '.join(self.sig_names)})")
        out: np.ndarray = self.signals_mv[:, self.sig_names.index(name)]
        return out


@dataclass(frozen=True)
class Annotations:
    sample: np.ndarray  # int64
    symbol: tuple[str, ...]


# MIT annotation codes (ecgcodes.h) -> symbols; index = code.
_CODES = ' NLRaVFJASEj/Q~?|s?T*D"=pB^t+u?![]ef?x()r'
_SKIP, _NUM, _SUB, _CHN, _AUX = 59, 60, 61, 62, 63


def _parse_header(path: Path) -> tuple[float, int, list[tuple[str, int, float, int, str]]]:
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and ln[0] != "#"]
    if not lines:
        raise DataError(str(path), "empty header")
    head = lines[0].split()
    n_sig = int(head[1])
    fs = float(head[2].split("/")[0]) if len(head) > 2 else 250.0
    n_samp = int(head[3]) if len(head) > 3 else -1
    sigs: list[tuple[str, int, float, int, str]] = []
    for ln in lines[1 : 1 + n_sig]:
        f = ln.split()
        fmt = int(f[1].split("x")[0].split(":")[0].split("+")[0])
        gain_s = f[2].split("/")[0] if len(f) > 2 else "200"
        base = None
        if "(" in gain_s:
            gain_s, base_s = gain_s.split("(")
            base = int(base_s.rstrip(")"))
        gain = float(gain_s) or 200.0
        adc_zero = int(f[4]) if len(f) > 4 else 0
        name = " ".join(f[8:]) if len(f) > 8 else f"sig{len(sigs)}"
        sigs.append((f[0], fmt, gain, adc_zero if base is None else base, name))
    return fs, n_samp, sigs


def _read_212(raw: np.ndarray, n_sig: int) -> np.ndarray:
    raw = raw[: (raw.size // 3) * 3].reshape(-1, 3).astype(np.int32)
    a = raw[:, 0] | ((raw[:, 1] & 0x0F) << 8)
    b = raw[:, 2] | ((raw[:, 1] & 0xF0) << 4)
    flat = np.empty(a.size * 2, dtype=np.int32)
    flat[0::2], flat[1::2] = a, b
    flat = np.where(flat > 2047, flat - 4096, flat)
    n = flat.size // n_sig
    out: np.ndarray = flat[: n * n_sig].reshape(n, n_sig)
    return out


def read_record(path: str | Path) -> Record:
    """Read `path`.hea and its signal file (format 212 or 16, all signals in one file)."""
    base = Path(path)
    base = base.with_suffix("") if base.suffix in (".hea", ".dat") else base
    hea = base.with_name(base.name + ".hea")
    if not hea.exists():
        raise DataError(str(hea), "no such WFDB header")
    fs, n_samp, sigs = _parse_header(hea)
    files = {s[0] for s in sigs}
    fmts = {s[1] for s in sigs}
    if len(files) != 1 or len(fmts) != 1 or next(iter(fmts)) not in (212, 16):
        raise DataError(str(hea), "only one signal file in format 212 or 16 is supported")
    dat = hea.with_name(next(iter(files)))
    raw = np.fromfile(dat, dtype=np.uint8)
    if next(iter(fmts)) == 212:
        adc = _read_212(raw, len(sigs))
    else:
        v = raw[: raw.size // 2 * 2].view("<i2").astype(np.int32)
        adc = v[: v.size // len(sigs) * len(sigs)].reshape(-1, len(sigs))
    if n_samp >= 0:
        adc = adc[:n_samp]
    gains = np.array([s[2] for s in sigs])
    baselines = np.array([s[3] for s in sigs])
    mv = (adc - baselines) / gains
    return Record(
        base.name,
        fs,
        tuple(s[4] for s in sigs),
        mv,
        tuple(float(g) for g in gains),
        tuple(int(b) for b in baselines),
    )


def read_annotations(path: str | Path, extension: str = "atr") -> Annotations:
    """Read an MIT-format annotation file (`path`.atr): sample indices and symbols."""
    base = Path(path)
    base = base.with_suffix("") if base.suffix in (".hea", ".dat", "." + extension) else base
    f = base.with_name(base.name + "." + extension)
    if not f.exists():
        raise DataError(str(f), "no such annotation file")
    words = np.fromfile(f, dtype="<u2")
    samples: list[int] = []
    symbols: list[str] = []
    t = 0
    i = 0
    n = words.size
    while i < n:
        w = int(words[i])
        code, val = w >> 10, w & 0x3FF
        i += 1
        if code == 0 and val == 0:
            break
        if code == _SKIP:
            if i + 1 >= n:
                break
            hi, lo = int(words[i]), int(words[i + 1])
            skip = (hi << 16) | lo
            t += skip - (1 << 32) if skip >= 1 << 31 else skip
            i += 2
        elif code == _AUX:
            i += (val + 1) // 2
        elif code in (_NUM, _SUB, _CHN):
            pass
        else:
            t += val
            samples.append(t)
            symbols.append(_CODES[code] if code < len(_CODES) else "?")
    return Annotations(np.asarray(samples, dtype=np.int64), tuple(symbols))
