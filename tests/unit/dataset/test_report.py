"""The report a service manager reads, as HTML: whose it is and when it was made, each national measure against its
standard (a recovery rate below 50% stands out), the last 12 months from the state database, the opt-out figures as
they are (pending, then the real count), quarantine linked rather than repeated, charts sized to their data, and
every value escaped. (The same page in headless Chromium: tests/e2e/test_monthly_dataset_report_browser.py.)"""

from __future__ import annotations

import datetime as dt
import re

import pytest
from caldicott.dataset import pipeline, state_tables
from caldicott.dataset.builder import Period
from caldicott.dataset.report import Provider, render, standard_status, trend
from caldicott.dataset.writer import load_key, new_key

MEASURES = {"referrals_received": 40, "referrals_open": 120, "entered_treatment": 30, "finished_treatment": 25,
            "waited_6_weeks_or_less": 20, "waited_6_weeks_pct": 80.0, "waited_18_weeks_or_less": 24,
            "waited_18_weeks_pct": 96.0, "finished_at_caseness": 19, "recovered": 8, "recovery_rate_pct": 42.1,
            "finished_with_paired_scores": 21, "reliably_improved": 14, "reliable_improvement_pct": 66.7}
FACTS = {"counts": {"IDS000Header": 1, "IDS001MPI": 100, "IDS101Referral": 120},
         "rule_failures": {"IDSREJ006": 2, "IDS10128": 1}, "quarantined_by_rule": {"IDSREJ006": 2},
         "quarantined": 2, "measures": MEASURES}
STATEMENT = {"rules": [{"rule": "ndop_not_applied_required_by_law", "output": "mandated_submission",
                        "counts": {"ndop_patients_kept_in_submission": None}}]}
WINDOW = {"opens": "2026-10-01", "closes": "2026-10-27", "primary": "2026-09", "refresh": "2026-08",
          "closes_at": "2026-10-27T23:00:00+00:00"}
AT = dt.datetime(2026, 10, 2, 5, 30, tzinfo=dt.UTC)


def _page(**over) -> str:
    args = {"period": "2026-09", "kind": "primary", "version": "2.1", "provider": Provider("ZZZ01", "Leeds <Talking>"),
            "facts": FACTS, "statement": STATEMENT, "trend_rows": [], "window": WINDOW, "generated_at": AT}
    return render(**{**args, **over})


def test_whose_report_and_when():
    page = _page()
    assert "Leeds &lt;Talking&gt; (ZZZ01)" in page and "<Talking>" not in page
    assert "2026-10-02 06:30 BST" in page                                     # London time
    assert "opens 2026-10-01, closes 2026-10-27" in page and "2026-09 (primary submission)" in page


def test_measures_against_their_standards_and_recovery_stands_out():
    page = _page()
    assert re.search(r"<p class='alert' id='alert-recovery_rate_pct'>Recovery rate 42\.1% is below the national "
                     r"standard of 50%", page)
    by_label = {label: cls for cls, label in re.findall(r'<tr class="([^"]*)"><td>([^<]*)</td>', page)}
    assert by_label["recovery rate %"] == "below"
    assert by_label["% first treatment within 6 weeks"] == "meets"
    assert standard_status("recovery_rate_pct", 50.0) == "meets"
    assert standard_status("waited_18_weeks_pct", None) == "no data"
    assert standard_status("referrals_received", 3) is None
    ok = _page(facts={**FACTS, "measures": {**MEASURES, "recovery_rate_pct": 55.0}})
    assert "alert-recovery_rate_pct" not in ok


def test_optouts_pending_then_real_never_a_placeholder():
    assert "pending (the opt-out check has not answered yet)" in _page()
    done = {"rules": [{**STATEMENT["rules"][0], "counts": {"ndop_patients_kept_in_submission": 3}}]}
    page = _page(statement=done)
    assert "ndop patients kept in submission: 3" in page and "submission: -1" not in page and "pending" not in page


def test_quarantine_is_linked_not_repeated():
    page = _page()
    assert "<a id='quarantine-link' href='quarantine.csv'>quarantine.csv</a>" in page
    assert page.count("IDSREJ006") == 3           # chart bar label + title attr + the one rules table row; no list


def test_charts_are_sized_to_their_data():
    page = _page()
    records = re.search(r'<svg class="chart" id="records-chart"[^>]* height="(\d+)"[^>]*data-rows="(\d+)"', page)
    failures = re.search(r'<svg class="chart" id="failures-chart"[^>]* height="(\d+)"[^>]*data-rows="(\d+)"', page)
    assert (records.group(2), failures.group(2)) == ("3", "2")
    assert int(records.group(1)) > int(failures.group(1))
    empty = _page(facts={**FACTS, "rule_failures": {}, "quarantined_by_rule": {}, "quarantined": 0})
    assert 'id="failures-chart"' not in empty and 'id="failures-chart-none"' in empty


def test_trend_prefers_the_refresh_and_keeps_twelve_months():
    history = []
    for i in range(14):
        key = f"{2025 + (i + 7) // 12}-{(i + 7) % 12 + 1:02d}"          # 2025-08 .. 2026-09
        history.append({"run_key": key, "kind": "primary", "facts": {"measures": {"recovery_rate_pct": 40.0 + i}}})
    history.append({"run_key": "2026-08", "kind": "refresh", "facts": {"measures": {"recovery_rate_pct": 99.0}}})
    rows = trend(history, "2026-09")
    assert len(rows) == 12 and rows[0][0] == "2025-10" and rows[-1][0] == "2026-09"
    assert rows[-2] == ("2026-08", "refresh", {"recovery_rate_pct": 99.0})
    page = _page(trend_rows=rows)
    assert 'id="trend-chart"' in page and 'data-rows="12"' in page
    assert page.count('<circle class="below"') == 8                    # 2025-10 .. 2026-05: 42..49 % are below 50


@pytest.fixture
def two_months(synth_source, state_engine, tmp_path):
    s = pipeline.Settings(org_provider="ZZZ01", work_dir=tmp_path / "work", key=load_key(new_key()),
                          provider_name="Synthetic service")
    for month in (8, 9):
        pipeline.build_validate_write(synth_source.engine, state_engine, Period.month(2026, month), s)
    return s


def test_the_pipeline_keeps_the_figures_and_the_next_month_shows_the_trend(two_months, state_engine):
    aug, sept = state_tables.get(state_engine, "2026-08"), state_tables.get(state_engine, "2026-09")
    assert aug["facts"]["measures"]["referrals_open"] == aug["row_counts"]["IDS101Referral"]
    page = (two_months.month_dir(Period.month(2026, 9)) / "report.html").read_text()
    trend_table = re.search(r"<table id=\"trend\">.*?</table>", page).group(0)
    assert "<td>2026-08</td>" in trend_table and "<td>2026-09</td>" in trend_table
    assert str(sept["facts"]["measures"]["referrals_received"]) in trend_table
