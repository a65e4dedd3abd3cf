"""Where the MIT-BIH DS1 records are (tests that need them skip when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

MITDB = Path(__file__).resolve().parents[3] / "shared" / "data" / "mitdb"


def mitdb_record(name: str) -> Path:
    base = MITDB / name
    if not (MITDB / f"{name}.hea").exists():
        pytest.skip("../shared/data/mitdb is absent")
    return base
