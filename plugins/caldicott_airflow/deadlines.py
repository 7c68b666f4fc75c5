"""Deadline alerts where lateness matters: daily letters by a set hour, the monthly submission window.

Airflow 3 replaced SLAs with ``DeadlineAlert``: when a run has not finished by its deadline, the
scheduler queues the callback, and the triggerer runs it. The triggerer imports the callback by its
dotted path, so it must live here in ``plugins/`` (not in a DAG file). The alert goes out through the
same channels as :class:`~caldicott_airflow.notifiers.OnCallNotifier` (webhook and/or e-mail) and
carries the DAG, run, run type, deadline and a link, never the run's conf (it could hold anything).

Use in a DAG file (cheap to import: no I/O)::

    from caldicott_airflow.deadlines import daily_finish_by, submission_window_close

    @dag(schedule="0 6 * * *", ..., deadline=daily_finish_by(hour=10, scheduled_at=dt.time(6)))
    @dag(schedule="0 6 1 * *", ..., deadline=submission_window_close(lead=dt.timedelta(hours=72)))

**The submission window's close is per run, from NHS England's calendar.** Each window closes on a day NHS England
publishes (22nd to 29th), so no fixed interval after the logical date can stand for it. Airflow 3.3 evaluates a
DeadlineAlert's *reference* once per run, when the run is created (scheduler or API server); a custom reference
(:class:`SubmissionWindowClose`) does it here: it reads the run (its ``month`` Param, else the month before its
logical date), loads the calendar in force (:func:`caldicott.dataset.calendar.load`: the Variable
``caldicott_dataset_calendar``, the file in ``CALDICOTT_DATASET_CALENDAR``, or the bundled default) and returns
the end of the close day of the window that takes that month as its primary submission. The alert's interval is
the *negative* lead, so it fires that long before the close. Airflow finds a custom reference only through a
plugin: :class:`CaldicottDeadlinesPlugin` (in this file) registers it. A period the calendar does not hold yields
no deadline (the reference never raises: an exception there would fail the run's creation); the run's first task
fails on the same calendar with a message naming the period.

Deadlines count from the run's **logical date**, which for a scheduled run is its scheduled time
(London, when the DAG's start_date is in Europe/London). A manual re-run of an old day or month has a
logical date in the past, so its deadline has already passed and it alerts at once; the alert says
``run_type: manual`` so on-call staff can tell.

``dag.test()`` / ``airflow dags test`` do not evaluate deadlines, and in Airflow 3.3.2 they crash when a
run with a DAG-level deadline *succeeds* (``DagRun.update_state`` looks the alerts up by id and gets
the SDK objects: ``'dict' object has no attribute 'hex'``). There is no switch for that here: a test that
runs a DAG that way strips the alerts on its own side, in its own subprocess.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib
import logging
import os
from typing import Any, ClassVar

from airflow.plugins_manager import AirflowPlugin
from airflow.sdk import AsyncCallback, DeadlineAlert, DeadlineReference
from airflow.sdk.definitions.deadline import BaseDeadlineReference

log = logging.getLogger(__name__)


def deadline_message(alert: str, context: dict | None) -> dict:
    """The patient-free alert for a missed deadline, from the triggerer's simple context."""
    run = (context or {}).get("dag_run") or {}
    deadline = (context or {}).get("deadline") or {}
    dag_id, run_id = run.get("dag_id"), run.get("dag_run_id")
    link = None
    try:
        from airflow.configuration import conf

        base = conf.get("api", "base_url", fallback="") or ""
        if base and dag_id and run_id:
            link = f"{base.rstrip('/')}/dags/{dag_id}/runs/{run_id}"
    except Exception:  # a link is nice to have; the alert is not
        link = None
    return {
        "kind": "deadline_missed",
        "alert": alert,
        "dag_id": dag_id,
        "run_id": run_id,
        "run_type": run.get("run_type"),
        "state": run.get("state"),
        "logical_date": run.get("logical_date"),
        "deadline": str(deadline.get("deadline_time")) if deadline.get("deadline_time") else None,
        "log_url": link,
    }


async def deadline_missed(alert: str = "deadline", webhook_url: str | None = None, email: str | None = None,
                          context: dict | None = None, **_: object) -> str:
    """Deadline callback (runs on the triggerer): alert on-call staff. Never raises.

    Returns a short string: Airflow 3.3.2 stores the return value in its ``callback`` table, and on SQLite a
    dict there makes the triggerer crash (sqlite3 cannot bind a dict), taking every deferred task with it.
    """
    from caldicott_airflow.notifiers import dispatch

    msg = deadline_message(alert, context)
    sent = await asyncio.to_thread(dispatch, msg, webhook_url=webhook_url, email=email)
    channels = [k for k, v in (sent or {}).items() if v] if isinstance(sent, dict) else []
    return f"{alert}: alerted via {', '.join(channels) or 'task log only'}"


def _callback(alert: str, webhook_url: str | None, email: str | None) -> AsyncCallback:
    kwargs = {"alert": alert}
    if webhook_url:
        kwargs["webhook_url"] = webhook_url
    if email:
        kwargs["email"] = email
    return AsyncCallback(deadline_missed, kwargs=kwargs)


def daily_finish_by(hour: int, minute: int = 0, *, scheduled_at: dt.time = dt.time(0, 0),
                    name: str | None = None, webhook_url: str | None = None,
                    email: str | None = None) -> DeadlineAlert | None:
    """Alert when a daily run scheduled at ``scheduled_at`` has not finished by ``hour:minute`` that day.

    ``scheduled_at`` is the time of day in the DAG's schedule (``"0 6 * * *"`` → ``dt.time(6)``).
    """
    due = dt.timedelta(hours=hour, minutes=minute) - dt.timedelta(hours=scheduled_at.hour,
                                                                  minutes=scheduled_at.minute)
    if due <= dt.timedelta(0):
        raise ValueError("the finish-by time must be after the scheduled time on the same day")
    alert = name or f"daily run not finished by {hour:02d}:{minute:02d}"
    return DeadlineAlert(reference=DeadlineReference.DAGRUN_LOGICAL_DATE, interval=due,
                         callback=_callback(alert, webhook_url, email), name=alert)


#: default lead of the submission alert before the window's close (a deployment sets CALDICOTT_DATASET_ALERT_LEAD_HOURS)
LEAD_ENV = "CALDICOTT_DATASET_ALERT_LEAD_HOURS"
DEFAULT_LEAD = dt.timedelta(hours=72)


def alert_lead() -> dt.timedelta:
    """How long before the window's close the submission alert fires: ``$CALDICOTT_DATASET_ALERT_LEAD_HOURS``, else
    72 hours (read when the DAG file is parsed)."""
    raw = os.environ.get(LEAD_ENV, "").strip()
    if not raw:
        return DEFAULT_LEAD
    hours = float(raw)
    if not 0 <= hours <= 24 * 28:
        raise ValueError(f"{LEAD_ENV} must be between 0 and 672 hours")
    return dt.timedelta(hours=hours)


def run_period(logical_date: dt.datetime | None, data_interval: tuple[Any, Any] | None, conf: dict | None) -> str:
    """The reporting month a monthly run covers, as ``caldicott_airflow.intervals.monthly_period`` decides it.

    The scheduler evaluates this when it creates the run, before any task resolves the run's params, so the one
    Param that names the period (``month``) is taken from the run's conf here. Airflow has already validated that
    conf against the DAG's Params (``DAG.create_dagrun``), so the value is the one the tasks will see in ``params``.
    """
    import pendulum

    from caldicott_airflow.intervals import monthly_period

    start, end = data_interval or (logical_date, logical_date)
    start, end = start or logical_date, end or logical_date
    context = {"params": {"month": (conf or {}).get("month")}, "data_interval_start": pendulum.instance(start),
               "data_interval_end": pendulum.instance(end)}
    return monthly_period(context)[0].strftime("%Y-%m")


def window_close_for(period: str, variable_text: str | None = None) -> dt.datetime:
    """End of the close day of the window taking ``period`` as its primary (raises CalendarError if none does)."""
    from caldicott.dataset.calendar import Kind, load

    return load(variable_text).window(period, Kind.PRIMARY).closes_at


def _calendar_variable() -> str | None:
    """The calendar Variable as the scheduler sees it (secrets backends, then the metadata database)."""
    from airflow.models.variable import Variable
    from caldicott.dataset.calendar import VARIABLE

    value = Variable.get(VARIABLE, default_var=None)
    return value if isinstance(value, str) else None


class SubmissionWindowClose(BaseDeadlineReference):
    """Deadline reference: the close of the submission window that takes this run's month (see the module doc)."""

    required_kwargs: ClassVar[set[str]] = {"dag_id", "run_id"}

    def _evaluate_with(self, *, session: Any, dag_id: str, run_id: str, **_: Any) -> dt.datetime | None:
        try:
            from airflow.models import DagRun
            from sqlalchemy import select

            run = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
            if run is None:
                return None
            interval = (run.data_interval_start, run.data_interval_end) if run.data_interval_start else None
            period = run_period(run.logical_date or run.run_after, interval, run.conf)
            return window_close_for(period, _calendar_variable())
        except Exception as exc:   # never fail the run's creation; its first task reports the calendar's problem
            log.warning("no submission-window deadline for %s %s: %s", dag_id, run_id, type(exc).__name__)
            return None


def _registered_reference() -> type:
    """:class:`SubmissionWindowClose` as imported by DAG files (``caldicott_airflow.deadlines``).

    Airflow loads this file a second time as a plugin module of another name; the reference it registers must be
    the class the DAG serialised (matched by its dotted path), not that copy.
    """
    return importlib.import_module("caldicott_airflow.deadlines").SubmissionWindowClose


class CaldicottDeadlinesPlugin(AirflowPlugin):
    """Registers :class:`SubmissionWindowClose` with Airflow (scheduler and API server evaluate it)."""

    name = "caldicott_deadlines"
    deadline_references: ClassVar[list] = [_registered_reference()]


def submission_window_close(lead: dt.timedelta | None = None, *, name: str | None = None,
                            webhook_url: str | None = None, email: str | None = None) -> DeadlineAlert | None:
    """Alert ``lead`` (default :func:`alert_lead`) before the close of the run's submission window (calendar)."""
    lead = alert_lead() if lead is None else lead
    if lead < dt.timedelta(0):
        raise ValueError("the lead must not be negative (it is how long BEFORE the close the alert fires)")
    hours = lead.total_seconds() / 3600
    alert = name or f"monthly data set not submitted {hours:g} h before the submission window closes"
    return DeadlineAlert(reference=SubmissionWindowClose(), interval=-lead,
                         callback=_callback(alert, webhook_url, email), name=alert)


def submission_window(alert_day: int = 20, alert_hour: int = 12, *, scheduled_day: int = 1,
                      scheduled_at: dt.time = dt.time(0, 0), name: str | None = None,
                      webhook_url: str | None = None, email: str | None = None) -> DeadlineAlert | None:
    """Alert when the monthly run has not finished by day ``alert_day``, ``alert_hour``:00 of its month.

    A fixed day, kept for DAGs without a calendar; the monthly data set uses :func:`submission_window_close`
    (the published close of each run's own window).
    ``scheduled_day`` / ``scheduled_at`` are the DAG's schedule (``"0 6 1 * *"`` → 1, ``dt.time(6)``).
    """
    if not 1 <= scheduled_day < alert_day <= 28:
        raise ValueError("alert_day must be after the scheduled day and no later than the 28th")
    due = (dt.timedelta(days=alert_day - scheduled_day, hours=alert_hour)
           - dt.timedelta(hours=scheduled_at.hour, minutes=scheduled_at.minute))
    alert = name or f"monthly submission not finished by day {alert_day} {alert_hour:02d}:00"
    return DeadlineAlert(reference=DeadlineReference.DAGRUN_LOGICAL_DATE, interval=due,
                         callback=_callback(alert, webhook_url, email), name=alert)
