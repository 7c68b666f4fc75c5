"""Hostile input through the shared record checks: no crash, every bad record named, good ones kept.

Property-based (hypothesis): unicode and control characters, 100 kB strings, SQL and template
injection text, impossible dates, wrong types. Each flow's own hostile-input tests build on this.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
from caldicott.records import checks
from caldicott.records.nhs_numbers import synthetic_numbers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

HOSTILE_TEXT = st.one_of(
    st.text(max_size=50),
    st.sampled_from(["'; DROP TABLE patient; --", "{{ 7*7 }}", "{% raw %}", "<script>alert(1)</script>",
                     "\x00\x1b[31m", "ＡＢＣ１ ２ＤＥ", "9" * 100_000]),
)
GOOD_NUMBERS = list(synthetic_numbers(np.random.default_rng(0), 50))


@st.composite
def patient_rows(draw):
    n = draw(st.integers(1, 12))
    rows = []
    for i in range(n):
        good = draw(st.booleans())
        rows.append({
            "local_patient_id": f"P{i}",
            "nhs_number": GOOD_NUMBERS[i] if good else draw(st.one_of(st.none(), HOSTILE_TEXT)),
            "postcode": "LS1 4AB" if good else draw(st.one_of(st.none(), HOSTILE_TEXT)),
            "birth_date": dt.date(1980, 1, 1) if good else draw(st.one_of(
                st.none(), st.dates(min_value=dt.date(2100, 1, 1)), HOSTILE_TEXT)),
            "gp_practice_code": "Z84001" if good else draw(st.one_of(st.none(), HOSTILE_TEXT)),
            "_good": good,
        })
    return pd.DataFrame(rows)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(patient_rows())
def test_hostile_patients_are_quarantined_and_good_ones_pass(df):
    found = checks.patient_problems(df.drop(columns="_good"), pd.Series(["Z84001"]), need_gp=True)
    flagged = {q.record_id for q in found}
    good_ids = set(df.loc[df["_good"], "local_patient_id"])
    assert not (flagged & good_ids)
    for _, row in df[~df["_good"]].iterrows():
        valid_pc = isinstance(row.postcode, str) and row.postcode == "LS1 4AB"
        valid_gp = row.gp_practice_code == "Z84001"
        valid_bd = isinstance(row.birth_date, dt.date) and row.birth_date < dt.date.today()
        if not (valid_pc and valid_gp and valid_bd) or row.nhs_number not in GOOD_NUMBERS:
            assert row.local_patient_id in flagged
    assert all(len(q.reason) < 200 and q.reason in checks.REASONS.values() for q in found)
