"""Which days a run is about, the same way in every DAG.

Scheduled runs cover their data interval. A run triggered by hand (or by the REST API) in Airflow 3
has an empty interval at its logical date; it is taken to mean "the period that ended at the logical
date" (the day, or the month, before it) — what on-call staff mean when they trigger a date to redo it.
A run triggered by an Asset event (``records_quality`` finished: :mod:`caldicott_airflow.assets`) has no
logical date and no data interval at all; it means the same as the clock's run would: the London day (or month)
before the moment it was queued (``dag_run.run_after``). So the daily flows cover yesterday whichever of the
Asset or the clock starts them, and the ledger makes the second of the two a no-op.

A ``day`` / ``month`` Param (``YYYY-MM-DD`` / ``YYYY-MM``, declared on the DAG, so a malformed value is refused
by the trigger form and the REST API before any run exists) overrides all of these. Only ``context["params"]`` is
read, never ``dag_run.conf``: Airflow merges the run's conf into the params and validates them at trigger time.
All dates are Europe/London calendar dates: the service's days and reporting months are local.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import pendulum

LONDON = pendulum.timezone("Europe/London")

#: JSON-schema pieces for the Params that name a period (``airflow.sdk.Param(**DAY_SCHEMA, ...)``).
#: ``format: date`` is checked by Airflow's jsonschema FormatChecker when the run is created.
DAY_SCHEMA: dict[str, Any] = {"type": ["null", "string"], "format": "date"}
MONTH_SCHEMA: dict[str, Any] = {"type": ["null", "string"], "pattern": r"^\d{4}-(0[1-9]|1[0-2])$"}


class IntervalError(ValueError):
    """A period the run's params name that cannot be a period (e.g. ``end`` not after ``start``)."""


def _params(context: Mapping[str, Any]) -> Mapping[str, Any]:
    return context.get("params") or {}


def _bounds(context: Mapping[str, Any]) -> tuple[pendulum.DateTime, pendulum.DateTime] | None:
    """The run's data interval in London time; None for a run that has none (Asset-triggered)."""
    start, end = context.get("data_interval_start"), context.get("data_interval_end")
    if start is None or end is None:
        return None
    return start.in_timezone(LONDON), end.in_timezone(LONDON)


def _queued_at(context: Mapping[str, Any]) -> pendulum.DateTime:
    """When an interval-less run was queued (``dag_run.run_after``), in London time."""
    run = context.get("dag_run")
    after = getattr(run, "run_after", None) if run is not None else None
    if after is None:
        raise IntervalError("the run has neither a data interval nor a run_after time: name the period in its params")
    return pendulum.instance(after).in_timezone(LONDON)


def daily_interval(context: Mapping[str, Any]) -> tuple[dt.date, dt.date]:
    """``[first_day, end_day)``: the London dates this run covers (one day for a manual or Asset-triggered run)."""
    day = _params(context).get("day")
    if day:
        first = dt.date.fromisoformat(day)
        return first, first + dt.timedelta(days=1)
    bounds = _bounds(context)
    if bounds is None:  # Asset-triggered: the day before the moment it was queued, as the clock's run would
        end = _queued_at(context).date()
        return end - dt.timedelta(days=1), end
    start, end = bounds
    if end > start:
        return start.date(), end.date()
    return end.date() - dt.timedelta(days=1), end.date()


def date_range(context: Mapping[str, Any]) -> tuple[dt.date, dt.date]:
    """``[start, end)`` from the ``start`` / ``end`` Params when both are set, else :func:`daily_interval`.

    The Params' schema checks each date's form at trigger time; that they come as a pair and in order cannot be
    said in one Param's schema, so it is checked here, in the run's first task, failing (without retry) by name.
    """
    params = _params(context)
    start, end = params.get("start"), params.get("end")
    if not start and not end:
        return daily_interval(context)
    if not (start and end):
        raise IntervalError("give both 'start' and 'end' (end exclusive), or neither")
    first, last = dt.date.fromisoformat(start), dt.date.fromisoformat(end)
    if last <= first:
        raise IntervalError(f"'end' ({end}) must be after 'start' ({start}): the range is end-exclusive")
    return first, last


def monthly_period(context: Mapping[str, Any]) -> tuple[dt.date, dt.date]:
    """``[first_of_month, first_of_next_month)``: the reporting month this run covers."""
    month = _params(context).get("month")
    if month:
        first = dt.date.fromisoformat(month + "-01")
    else:
        bounds = _bounds(context)
        if bounds is None:
            end_date = _queued_at(context).date()
            first = (end_date.replace(day=1) - dt.timedelta(days=1)).replace(day=1)
        else:
            start, end = bounds
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


def run_interval(context: Mapping[str, Any]) -> tuple[dt.date, dt.date, str]:
    """``(first, end, run key)`` of a daily flow run taking a ``day`` or ``start``/``end`` range (gp_letters,
    transfer_of_care). A malformed range is a person's mistake in the trigger: the task fails without retry, by
    name, since retrying cannot fix it."""
    from airflow.sdk.exceptions import AirflowFailException

    try:
        first, end = date_range(context)
    except IntervalError as exc:
        raise AirflowFailException(str(exc)) from None
    return first, end, run_key(first, end)
