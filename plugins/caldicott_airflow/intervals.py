"""Which days a run is about, the same way in every DAG.

Scheduled runs cover their data interval. A run triggered by hand (or by the REST API) in Airflow 3
has an empty interval at its logical date; it is taken to mean "the period that ended at the logical
date" (the day, or the month, before it) — what on-call staff mean when they trigger a date to redo it.
A ``day`` / ``month`` entry in the run's conf (``YYYY-MM-DD`` / ``YYYY-MM``) overrides both.
All dates are Europe/London calendar dates: the service's days and reporting months are local.
"""

from __future__ import annotations

import datetime as dt

import pendulum

LONDON = pendulum.timezone("Europe/London")


def _bounds(context) -> tuple[pendulum.DateTime, pendulum.DateTime]:
    start = context["data_interval_start"].in_timezone(LONDON)
    end = context["data_interval_end"].in_timezone(LONDON)
    return start, end


def daily_interval(context) -> tuple[dt.date, dt.date]:
    """``[first_day, end_day)``: the London dates this run covers (one day for a manual run)."""
    conf = (context.get("dag_run").conf if context.get("dag_run") is not None else None) or {}
    if conf.get("day"):
        day = dt.date.fromisoformat(conf["day"])
        return day, day + dt.timedelta(days=1)
    start, end = _bounds(context)
    if end > start:
        return start.date(), end.date()
    day = end.date() - dt.timedelta(days=1)
    return day, end.date()


def monthly_period(context) -> tuple[dt.date, dt.date]:
    """``[first_of_month, first_of_next_month)``: the reporting month this run covers."""
    conf = (context.get("dag_run").conf if context.get("dag_run") is not None else None) or {}
    if conf.get("month"):
        first = dt.date.fromisoformat(conf["month"] + "-01")
    else:
        start, end = _bounds(context)
        if end > start:
            first = start.date().replace(day=1)
        else:  # manual run: the month before the one holding the logical date
            first = (end.date().replace(day=1) - dt.timedelta(days=1)).replace(day=1)
    nxt = (first.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
    return first, nxt


def run_key(first: dt.date, end: dt.date) -> str:
    """The id of a period in the ledger and quarantine: ``2026-10-14`` for a day, ``2026-10`` for a month."""
    if (end - first).days == 1:
        return first.isoformat()
    if first.day == 1 and end == (first.replace(day=28) + dt.timedelta(days=4)).replace(day=1):
        return first.strftime("%Y-%m")
    return f"{first.isoformat()}..{end.isoformat()}"
