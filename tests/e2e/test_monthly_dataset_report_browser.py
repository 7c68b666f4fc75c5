"""The data set report as a service manager sees it: headless Debian chromium (driven by Playwright, no browser
download) renders report.html from disk and the test reads what is on the screen: whose report and when, the
national measures against their standards (a recovery rate below 50% stands out in red), the last months from the
state database, the real opt-out figure, the quarantine link (to a file that is there), charts as tall as their
data. No Airflow needed: the report is a file in the submission's folder."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
from caldicott.dataset import idb, pipeline
from caldicott.dataset.builder import Period
from caldicott.dataset.report import Provider, write_report
from caldicott.dataset.writer import load_key, new_key

from tests.browser import chromium

pytestmark = pytest.mark.e2e

SEPT = Period.month(2026, 9)


@pytest.fixture
def reports(synth_source, state_engine, tmp_path):
    """Two months through the pipeline (so September's report has a trend), September's opt-out check answered,
    and a page with a recovery rate below standard."""
    s = pipeline.Settings(org_provider="ZZZ01", work_dir=tmp_path / "work", key=load_key(new_key()),
                          provider_name="Synthetic Talking Therapies")
    for month in (8, 9):
        pipeline.build_validate_write(synth_source.engine, state_engine, Period.month(2026, month), s)
    number = pipeline.mpi_numbers(state_engine, SEPT, s)[0]
    pipeline.record_optouts(state_engine, SEPT, s, "primary", {number}, "test: MESH stand-in")
    low = tmp_path / "low"
    measures = {"finished_treatment": 25, "waited_6_weeks_pct": 80.0, "waited_18_weeks_pct": 96.0,
                "finished_at_caseness": 19, "recovered": 8, "recovery_rate_pct": 42.1}
    write_report(low, period="2026-09", kind="refresh", version="2.1", provider=Provider("ZZZ01", "Low Recovery"),
                 facts={"counts": {"IDS101Referral": 3}, "measures": measures}, generated_at=dt.datetime.now(dt.UTC))
    return s.month_dir(SEPT) / "report.html", low / "report.html"


def test_the_report_shows_what_a_service_manager_needs(reports, tmp_path):
    page_path, low_path = reports
    shots = Path(os.environ.get("CALDICOTT_SCREENSHOTS", tmp_path))
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(page_path.as_uri())
        text = page.locator("body").inner_text()
        assert "Synthetic Talking Therapies (ZZZ01)" in page.locator("#meta-provider").inner_text()
        assert page.locator("#meta-ods-code").inner_text() == "ZZZ01"
        assert page.locator("#meta-generated").inner_text().startswith(dt.datetime.now(dt.UTC).strftime("%Y-"))
        assert "2026-09 (primary submission)" in text
        # measures with their standards
        measures = page.locator("#measures tbody tr")
        assert measures.count() == 14
        recovery = page.locator("#measures tbody tr", has_text="recovery rate %")
        assert recovery.locator("td").nth(2).inner_text() == "50%"
        # the last months, from the state database
        trend = page.locator("#trend tbody tr")
        assert [trend.nth(i).locator("td").first.inner_text() for i in range(trend.count())] == ["2026-08",
                                                                                                "2026-09"]
        # the real opt-out figure, not a placeholder
        optouts = page.locator("#optouts").inner_text()
        assert "ndop patients kept in submission: 1" in optouts and "-1" not in optouts
        # quarantine linked, the file beside the report
        link = page.locator("#quarantine-link")
        assert link.get_attribute("href") == "quarantine.csv" and (page_path.parent / "quarantine.csv").exists()
        # charts as tall as their data: a bar for every table of the national layout (all 21 of v2.1)
        records = page.locator("#records-chart")
        rows = int(records.get_attribute("data-rows"))
        assert rows == len(idb.tables()) == 21
        assert records.bounding_box()["height"] == pytest.approx(22 * rows + 6, abs=1)
        assert records.locator("rect").count() == rows
        page.screenshot(path=str(shots / "dataset_report.png"), full_page=True)

        page.goto(low_path.as_uri())
        alert = page.locator("#alert-recovery_rate_pct")
        assert alert.is_visible() and alert.inner_text() == \
            "Recovery rate 42.1% is below the national standard of 50%."
        row = page.locator("#measures tbody tr", has_text="recovery rate %")
        assert row.get_attribute("class") == "below" and "BELOW STANDARD" in row.inner_text()
        red = row.locator("td").first.evaluate("e => getComputedStyle(e).backgroundColor")
        ok = page.locator("#measures tbody tr", has_text="% first treatment within 6 weeks").locator("td").first
        assert red == "rgb(253, 232, 230)" and ok.evaluate("e => getComputedStyle(e).backgroundColor") != red
        assert page.locator("#failures-chart").count() == 0 and page.locator("#failures-chart-none").is_visible()
        page.screenshot(path=str(shots / "dataset_report_low_recovery.png"), full_page=True)
