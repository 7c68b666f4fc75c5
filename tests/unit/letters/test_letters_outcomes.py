"""Recovery and reliable improvement, with the national definitions (NHS England's national programme)."""

from __future__ import annotations

import datetime as dt

import pytest
from caldicott.letters import outcomes
from caldicott.letters.build import ATTENDED, find_events, load_letters
from caldicott.records.schema import SNOMED


@pytest.mark.parametrize(("args", "recovered", "reliable"), [
    ((15, 10, 5, 4), True, True),        # caseness -> below both, PHQ down 10
    ((15, 10, 9, 8), False, True),       # GAD-7 still at caseness (8): not recovered; PHQ down 6
    ((8, 6, 3, 2), None, False),         # not at caseness at start: recovery not applicable; down 5 / 4? GAD down 4
    ((12, 9, 11, 9), False, False),      # no change
    ((20, 5, 10, 10), False, False),     # PHQ down 10 but GAD up 5: not reliable
    ((None, 9, 3, 2), None, None),
])
def test_outcome_definitions(args, recovered, reliable):
    if args == (8, 6, 3, 2):
        reliable = True   # GAD-7 down exactly 4 counts
    assert outcomes.recovered(*args) is recovered
    assert outcomes.reliably_improved(*args) is reliable


def test_caseness_thresholds():
    assert outcomes.caseness(10, 0) and outcomes.caseness(0, 8)
    assert not outcomes.caseness(9, 7)


def test_discharge_outcome_matches_the_source(synth_source):
    events = [e for e in find_events(synth_source.engine, dt.date(2026, 9, 1), dt.date(2026, 11, 1))
              if e[1] == "discharge"]
    letters = [lt for lt in load_letters(synth_source.engine, events) if not lt.problems][:20]
    assert letters
    frames = synth_source.result.frames
    cc, ca = frames["care_contact"], frames["coded_assessment"]
    for lt in letters:
        c = cc[cc["service_request_id"] == lt.referral_id]
        assert lt.outcome["attended"] == int(c["attend_code"].isin(ATTENDED).sum())
        assert lt.outcome["missed"] == int(c["attend_code"].isin(["3", "7"]).sum())
        phq = ca[(ca["service_request_id"] == lt.referral_id) & (ca["tool_code"] == SNOMED["PHQ9"])]
        phq = phq.sort_values("assessed_at")["score"].tolist()
        if len(phq) >= 2:
            assert (lt.outcome["phq9_first"], lt.outcome["phq9_last"]) == (phq[0], phq[-1])


def test_assessment_is_the_first_attended_assessment_contact(synth_source):
    events = find_events(synth_source.engine, dt.date(2026, 10, 1), dt.date(2026, 10, 15))
    cc = synth_source.result.frames["care_contact"]
    for rid, event, day in events:
        if event != "assessment":
            continue
        c = cc[(cc["service_request_id"] == rid) & (cc["app_type"] == "01") & cc["attend_code"].isin(ATTENDED)]
        first = c.sort_values("contact_at")["contact_at"].iloc[0]
        assert first.tz_localize("UTC").tz_convert("Europe/London").date() == day
