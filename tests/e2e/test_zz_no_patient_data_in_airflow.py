"""After every other end-to-end test has run its DAGs (files run in name order; this one is last):
no NHS number, name, birth date, postcode or e-mail of any synthetic patient is anywhere in Airflow's
metadata database (XCom, run conf, HITL details, notes, rendered fields, audit log) or task logs."""

from __future__ import annotations

from pathlib import Path

import pytest

from devtools.leakscan import scan

pytestmark = pytest.mark.e2e


def test_no_patient_data_anywhere_in_airflow(e2e):
    home = Path(e2e.stack.env["AIRFLOW_HOME"])
    result = scan(e2e.workspace.records_db, home, e2e.stack.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    print(f"leak scan: {result.values_searched} patient values searched in {result.sources} sources "
          f"({result.bytes_scanned:,} bytes); {len(result.hits)} found")
    assert result.sources > 10 and result.bytes_scanned > 0
    assert result.hits == []
