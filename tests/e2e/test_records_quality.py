"""The records-quality DAG through a real scheduler: every deliberately bad record, and only those."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3

import pytest
from caldicott.db import make_engine, sqlite_url
from caldicott.state.quarantine import entries

pytestmark = pytest.mark.e2e


def test_records_quality_quarantines_exactly_the_planted_faults(e2e):
    run_id = e2e.stack.trigger("records_quality", dt.datetime(2026, 11, 2, tzinfo=dt.UTC))
    assert e2e.stack.wait_run("records_quality", run_id, timeout=600) == "success"
    counts = e2e.stack.xcom("records_quality", run_id, "scan_records")
    manifest = json.loads(e2e.workspace.manifest.read_text())
    bad = manifest["bad"]

    found = entries(make_engine(sqlite_url(e2e.workspace.state_db)), "records_quality", "2026-11-01")
    by_reason: dict[str, set[str]] = {}
    for q in found:
        by_reason.setdefault(q.reason_code, set()).add(q.record_id)
    assert by_reason["invalid_nhs_number"] == set(bad["invalid_nhs_number"])
    assert by_reason["invalid_postcode"] == set(bad["postcode_without_space"])
    assert by_reason["missing_gp_practice"] == set(bad["missing_gp_practice"])
    assert by_reason["duplicate_nhs_number"] == set(bad["duplicate_nhs_number"])
    assert by_reason["discharge_before_referral"] == set(bad["discharge_before_referral"])
    assert by_reason["unknown_referrer"] == set(bad["unknown_referrer"])
    assert by_reason["score_out_of_range"] == set(bad["score_out_of_range"])
    assert by_reason["contact_before_referral"] == set(bad["contact_before_referral"])
    # XCom carries counts only, and they agree with the quarantine
    assert counts["quarantined"] == len(found)
    records = sqlite3.connect(e2e.workspace.records_db)
    numbers = [n for (n,) in records.execute("SELECT nhs_number FROM patient") if n]
    assert numbers and not any(n in json.dumps(counts) for n in numbers)
