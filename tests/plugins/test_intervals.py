"""Which London days and months a run covers: scheduled, manual, Asset-triggered, and named by the run's Params."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import pendulum
import pytest
from caldicott_airflow.intervals import IntervalError, daily_interval, date_range, monthly_period, run_interval, run_key

UTC = pendulum.timezone("UTC")


def ctx(start, end, params=None, conf=None):
    """A task context as Airflow builds it: ``params`` already hold the run's conf (merged and validated)."""
    return {"data_interval_start": start, "data_interval_end": end, "params": params or {},
            "dag_run": SimpleNamespace(conf=conf or {}, run_after=end)}


def asset_ctx(run_after, params=None):
    """An Asset-triggered run: no logical date, no data interval (Airflow 3 leaves both keys out)."""
    return {"params": params or {}, "dag_run": SimpleNamespace(conf={}, run_after=run_after)}


def test_scheduled_daily_run_covers_its_london_day():
    # the London day 2026-06-15 is 2026-06-14T23:00Z .. 2026-06-15T23:00Z in summer time
    c = ctx(pendulum.datetime(2026, 6, 14, 23, tz=UTC), pendulum.datetime(2026, 6, 15, 23, tz=UTC))
    assert daily_interval(c) == (dt.date(2026, 6, 15), dt.date(2026, 6, 16))


def test_manual_run_means_the_day_before_its_logical_date():
    t = pendulum.datetime(2026, 10, 15, tz="Europe/London")
    assert daily_interval(ctx(t, t)) == (dt.date(2026, 10, 14), dt.date(2026, 10, 15))
    assert monthly_period(ctx(t, t)) == (dt.date(2026, 9, 1), dt.date(2026, 10, 1))


def test_params_override():
    t = pendulum.datetime(2026, 10, 15, tz=UTC)
    assert daily_interval(ctx(t, t, {"day": "2026-03-29"})) == (dt.date(2026, 3, 29), dt.date(2026, 3, 30))
    assert monthly_period(ctx(t, t, {"month": "2026-12"})) == (dt.date(2026, 12, 1), dt.date(2027, 1, 1))
    assert monthly_period(asset_ctx(t, {"month": "2026-12"})) == (dt.date(2026, 12, 1), dt.date(2027, 1, 1))


def test_conf_is_read_only_through_params():
    """A value only in ``dag_run.conf`` (e.g. one that failed validation never gets that far) is not read."""
    t = pendulum.datetime(2026, 10, 15, tz="Europe/London")
    assert daily_interval(ctx(t, t, conf={"day": "2026-03-29"})) == (dt.date(2026, 10, 14), dt.date(2026, 10, 15))
    assert monthly_period(ctx(t, t, conf={"month": "2026-12"})) == (dt.date(2026, 9, 1), dt.date(2026, 10, 1))


@pytest.mark.parametrize(("queued", "day"), [
    (pendulum.datetime(2026, 10, 15, 0, 7, tz="Europe/London"), dt.date(2026, 10, 14)),   # just after the scan
    (pendulum.datetime(2026, 6, 14, 23, 30, tz=UTC), dt.date(2026, 6, 14)),                # 00:30 BST on the 15th
    (pendulum.datetime(2026, 10, 15, 5, 59, tz=UTC), dt.date(2026, 10, 14)),
])
def test_an_asset_triggered_run_covers_the_day_the_clock_run_would(queued, day):
    """Both runs of a day (the Asset's and the 06:00 fallback) must cover the same London day, or the fallback would
    send a day the Asset's run never planned."""
    assert daily_interval(asset_ctx(queued)) == (day, day + dt.timedelta(days=1))
    clock = pendulum.datetime(2026, 10, 15, 6, tz="Europe/London")
    if queued.in_timezone("Europe/London").date() == clock.date():
        assert daily_interval(asset_ctx(queued)) == daily_interval(ctx(clock, clock))


def test_an_asset_triggered_run_of_a_monthly_flow_means_the_month_before():
    queued = pendulum.datetime(2026, 11, 1, 0, 5, tz="Europe/London")
    assert monthly_period(asset_ctx(queued)) == (dt.date(2026, 10, 1), dt.date(2026, 11, 1))


def test_a_run_with_no_interval_and_no_run_after_fails_by_name():
    with pytest.raises(IntervalError, match="name the period"):
        daily_interval({"params": {}, "dag_run": SimpleNamespace(conf={}, run_after=None)})


def test_date_range_takes_start_and_end_together_and_in_order():
    t = pendulum.datetime(2026, 10, 15, tz="Europe/London")
    assert date_range(ctx(t, t)) == (dt.date(2026, 10, 14), dt.date(2026, 10, 15))
    assert date_range(ctx(t, t, {"day": "2026-03-29"})) == (dt.date(2026, 3, 29), dt.date(2026, 3, 30))
    assert date_range(ctx(t, t, {"start": "2025-06-01", "end": "2026-08-01", "day": None})) == \
        (dt.date(2025, 6, 1), dt.date(2026, 8, 1))
    with pytest.raises(IntervalError, match="both"):
        date_range(ctx(t, t, {"start": "2025-06-01", "end": None}))
    with pytest.raises(IntervalError, match="must be after"):
        date_range(ctx(t, t, {"start": "2025-06-01", "end": "2025-06-01"}))


def test_a_daily_flows_range_comes_with_its_run_key_and_a_bad_one_fails_without_retry():
    from airflow.sdk.exceptions import AirflowFailException

    t = pendulum.datetime(2026, 10, 15, tz="Europe/London")
    assert run_interval(ctx(t, t)) == (dt.date(2026, 10, 14), dt.date(2026, 10, 15), "2026-10-14")
    assert run_interval(ctx(t, t, {"start": "2026-08-01", "end": "2026-10-01"}))[2] == "2026-08-01..2026-10-01"
    with pytest.raises(AirflowFailException, match="both"):   # fails the task without retry, naming the mistake
        run_interval(ctx(t, t, {"start": "2026-08-01", "end": None}))


def test_scheduled_monthly_run_and_run_keys():
    c = ctx(pendulum.datetime(2026, 9, 1, tz="Europe/London"), pendulum.datetime(2026, 10, 1, tz="Europe/London"))
    first, end = monthly_period(c)
    assert (first, end) == (dt.date(2026, 9, 1), dt.date(2026, 10, 1))
    assert run_key(first, end) == "2026-09"
    assert run_key(dt.date(2026, 9, 3), dt.date(2026, 9, 4)) == "2026-09-03"
