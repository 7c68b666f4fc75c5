"""NHS England's submission calendar: the bundled default is the published one, each window takes the month before
it as primary and the month before that as refresh, windows close at the end of their published day (London), a
period the calendar does not hold fails naming it, and a Variable or file overrides the bundled default."""

from __future__ import annotations

import datetime as dt

import pytest
from caldicott.dataset import calendar
from caldicott.dataset.calendar import CalendarError, Kind, PeriodNotInCalendar, Window

NEXT_YEAR = calendar.render([
    Window(dt.date(2026, 10, 1), dt.date(2026, 10, 27), "2026-08", "2026-09"),
    Window(dt.date(2026, 11, 1), dt.date(2026, 11, 24), "2026-09", "2026-10"),
], comment="a service's own copy of NHS England's next calendar")


def test_bundled_default_is_the_published_calendar():
    cal = calendar.bundled()
    assert cal.source == "bundled default" and len(cal.windows) == 35
    first, last = cal.windows[0], cal.windows[-1]
    assert (first.opens, first.closes, first.refresh, first.primary) == (dt.date(2022, 5, 16), dt.date(2022, 5, 27),
                                                                         "2022-03", "2022-04")
    assert (last.primary, last.closes) == ("2025-02", dt.date(2025, 3, 27))
    for w in cal.windows:
        assert w.refresh == calendar.month_before(w.primary)
        assert w.opens.strftime("%Y-%m") == calendar.month_after(w.primary)
        assert 22 <= w.closes.day <= 29 and w.closes.month == w.opens.month
    assert calendar.BUNDLED.read_text().startswith("# NHS Talking Therapies")   # says where it came from


def test_each_period_goes_twice_primary_then_refresh():
    cal = calendar.bundled()
    primary, refresh = cal.window("2024-10", Kind.PRIMARY), cal.window("2024-10", Kind.REFRESH)
    assert (primary.opens, primary.closes) == (dt.date(2024, 11, 1), dt.date(2024, 11, 28))
    assert (refresh.opens, refresh.closes) == (dt.date(2024, 12, 1), dt.date(2024, 12, 23))
    assert primary.submissions() == [("2024-10", Kind.PRIMARY), ("2024-09", Kind.REFRESH)]
    assert cal.window_open_on(dt.date(2024, 12, 10)) == refresh
    assert cal.window_open_on(dt.date(2024, 12, 27)) is None          # between windows


def test_the_close_is_the_end_of_the_published_day_in_london():
    bst = Window(dt.date(2024, 6, 1), dt.date(2024, 6, 27), "2024-04", "2024-05")
    gmt = Window(dt.date(2024, 12, 1), dt.date(2024, 12, 23), "2024-10", "2024-11")
    assert bst.closes_at == dt.datetime(2024, 6, 27, 23, 0, tzinfo=dt.UTC)      # midnight BST
    assert gmt.closes_at == dt.datetime(2024, 12, 24, 0, 0, tzinfo=dt.UTC)      # midnight GMT
    assert not gmt.is_closed(dt.datetime(2024, 12, 23, 23, 59, tzinfo=dt.UTC))
    assert gmt.is_closed(dt.datetime(2024, 12, 24, 0, 0, tzinfo=dt.UTC))


def test_a_period_outside_the_calendar_fails_clearly():
    with pytest.raises(PeriodNotInCalendar, match=r"reporting period 2026-09 \(primary\) is not in the submission "
                                                  r"calendar \(bundled default: primary periods 2022-04 to 2025-02\); "
                                                  r"load NHS England's calendar for that year \(Variable "
                                                  r"caldicott_dataset_calendar or CALDICOTT_DATASET_CALENDAR"):
        calendar.bundled().window("2026-09")


def test_variable_then_file_then_bundled(tmp_path, monkeypatch):
    path = tmp_path / "iapt_2026.tsv"
    path.write_text(NEXT_YEAR)
    monkeypatch.delenv(calendar.PATH_ENV, raising=False)
    assert calendar.load().source == "bundled default"
    monkeypatch.setenv(calendar.PATH_ENV, str(path))
    from_file = calendar.load()
    assert from_file.source == "file iapt_2026.tsv" and from_file.window("2026-09").closes == dt.date(2026, 10, 27)
    from_variable = calendar.load(NEXT_YEAR.replace("2026-10-27", "2026-10-26"))
    assert from_variable.source == "Variable caldicott_dataset_calendar"
    assert from_variable.window("2026-09").closes == dt.date(2026, 10, 26)
    monkeypatch.setenv(calendar.PATH_ENV, str(tmp_path / "missing.tsv"))
    with pytest.raises(CalendarError, match=r"calendar file missing.tsv .* cannot be read"):
        calendar.load()


@pytest.mark.parametrize(("text", "message"), [
    ("opens\tcloses\n", "the first line must be the header"),
    ("window_opens\twindow_closes\trefresh_period\tprimary_period\n2026-10-01\t2026-10-27\t2026-08\n",
     "row 2: expected 4"),
    ("window_opens\twindow_closes\trefresh_period\tprimary_period\n2026-10-01\t27/10/2026\t2026-08\t2026-09\n",
     "dates must be YYYY-MM-DD"),
    ("window_opens\twindow_closes\trefresh_period\tprimary_period\n2026-10-01\t2026-09-27\t2026-08\t2026-09\n",
     "closes before it opens"),
    ("window_opens\twindow_closes\trefresh_period\tprimary_period\n2026-10-01\t2026-10-27\t2026-07\t2026-09\n",
     "refresh period must be the month before"),
    ("window_opens\twindow_closes\trefresh_period\tprimary_period\n2026-09-20\t2026-10-27\t2026-08\t2026-09\n",
     "cannot open before its primary month ends"),
    ("window_opens\twindow_closes\trefresh_period\tprimary_period\n2026-10-01\t2026-10-27\t2026-08\t2026-09\n"
     "2026-11-01\t2026-11-24\t2026-08\t2026-09\n", "two windows take 2026-09"),
])
def test_a_broken_calendar_is_refused_with_its_row(text, message):
    with pytest.raises(CalendarError, match=message):
        calendar.parse(text, "test")
