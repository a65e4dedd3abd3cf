"""Beat matching as in ANSI/AAMI EC57: one-to-one within a tolerance, Se / +P / timing."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Reference beats: the beat annotation symbols of the MIT-BIH databases (AAMI N S V F Q).
BEAT_SYMBOLS = frozenset("NLRejAaJSVEF/fQ")
AAMI_CLASS = {
    **dict.fromkeys("NLRej", "N"),
    **dict.fromkeys("AaJS", "S"),
    **dict.fromkeys("VE", "V"),
    "F": "F",
    **dict.fromkeys("/fQ", "Q"),
}


@dataclass(frozen=True)
class Match:
    """Result of matching detections to reference beats (indices into each array)."""

    ref_idx: np.ndarray  # matched reference beats
    det_idx: np.ndarray  # their detections
    n_ref: int
    n_det: int

    @property
    def tp(self) -> int:
        return int(self.ref_idx.size)

    @property
    def fn(self) -> int:
        return self.n_ref - self.tp

    @property
    def fp(self) -> int:
        return self.n_det - self.tp


def match_beats(ref: np.ndarray, det: np.ndarray, tol: int) -> Match:
    """Pair each reference beat with at most one detection within `tol` samples (and vice
    versa), closest pairs first; both inputs sorted sample indices."""
    ref = np.asarray(ref, dtype=np.int64)
    det = np.asarray(det, dtype=np.int64)
    if ref.size == 0 or det.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Match(empty, empty, int(ref.size), int(det.size))
    # Candidate pairs: each reference with its nearest detections on both sides.
    pos = np.searchsorted(det, ref)
    pairs = []
    for off in (-1, 0):
        j = pos + off
        ok = (j >= 0) & (j < det.size)
        i = np.nonzero(ok)[0]
        d = np.abs(det[j[ok]] - ref[i])
        keep = d <= tol
        pairs.append(np.stack([d[keep], i[keep], j[ok][keep]], axis=1))
    cand = np.concatenate(pairs)
    cand = cand[np.lexsort((cand[:, 1], cand[:, 0]))]
    used_r = np.zeros(ref.size, dtype=bool)
    used_d = np.zeros(det.size, dtype=bool)
    ri, di = [], []
    for _, i, j in cand.tolist():
        if not used_r[i] and not used_d[j]:
            used_r[i] = used_d[j] = True
            ri.append(i)
            di.append(j)
    order = np.argsort(ri)
    return Match(
        np.asarray(ri, dtype=np.int64)[order],
        np.asarray(di, dtype=np.int64)[order],
        int(ref.size),
        int(det.size),
    )
