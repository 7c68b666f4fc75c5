"""Which London days and months a run covers: scheduled, manual, and overridden by conf."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import pendulum
from caldicott_airflow.intervals import daily_interval, monthly_period, run_key

UTC = pendulum.timezone("UTC")


def ctx(start, end, conf=None):
    return {"data_interval_start": start, "data_interval_end": end, "dag_run": SimpleNamespace(conf=conf or {})}


def test_scheduled_daily_run_covers_its_london_day():
    # the London day 2026-06-15 is 2026-06-14T23:00Z .. 2026-06-15T23:00Z in summer time
    c = ctx(pendulum.datetime(2026, 6, 14, 23, tz=UTC), pendulum.datetime(2026, 6, 15, 23, tz=UTC))
    assert daily_interval(c) == (dt.date(2026, 6, 15), dt.date(2026, 6, 16))


def test_manual_run_means_the_day_before_its_logical_date():
    t = pendulum.datetime(2026, 10, 15, tz="Europe/London")
    assert daily_interval(ctx(t, t)) == (dt.date(2026, 10, 14), dt.date(2026, 10, 15))
    assert monthly_period(ctx(t, t)) == (dt.date(2026, 9, 1), dt.date(2026, 10, 1))


def test_conf_overrides():
    t = pendulum.datetime(2026, 10, 15, tz=UTC)
    assert daily_interval(ctx(t, t, {"day": "2026-03-29"})) == (dt.date(2026, 3, 29), dt.date(2026, 3, 30))
    assert monthly_period(ctx(t, t, {"month": "2026-12"})) == (dt.date(2026, 12, 1), dt.date(2027, 1, 1))


def test_scheduled_monthly_run_and_run_keys():
    c = ctx(pendulum.datetime(2026, 9, 1, tz="Europe/London"), pendulum.datetime(2026, 10, 1, tz="Europe/London"))
    first, end = monthly_period(c)
    assert (first, end) == (dt.date(2026, 9, 1), dt.date(2026, 10, 1))
    assert run_key(first, end) == "2026-09"
    assert run_key(dt.date(2026, 9, 3), dt.date(2026, 9, 4)) == "2026-09-03"
