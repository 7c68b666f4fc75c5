"""Test switches, fakes and demo defaults live in tests/ and devtools/ only: the deployed code (dags/, plugins/,
include/) has no way to have the national data opt-out answered by anything but NHS England's service (issue 14).
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEPLOYED = ("dags", "plugins", "include")
FORBIDDEN = ("CALDICOTT_NDOP_TEST_DOUBLE", "CALDICOTT_NDOP_OPTED_OUT_FILE", "FakeNdopService", "NdopDouble",
             "ndop_double", "is_test_double")


def test_no_ndop_test_double_or_switch_in_deployed_code():
    files = [p for d in DEPLOYED for p in (ROOT / d).rglob("*.py")]
    assert len(files) > 20
    hits = sorted(f"{p.relative_to(ROOT)}: {word}" for p in files for word in FORBIDDEN if word in p.read_text())
    assert hits == []
