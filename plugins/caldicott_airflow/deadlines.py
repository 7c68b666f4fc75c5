"""Deadline alerts where lateness matters: daily letters by a set hour, the monthly submission window.

Airflow 3 replaced SLAs with ``DeadlineAlert``: when a run has not finished by its deadline, the
scheduler queues the callback, and the triggerer runs it. The triggerer imports the callback by its
dotted path, so it must live here in ``plugins/`` (not in a DAG file). The alert goes out through the
same channels as :class:`~caldicott_airflow.notifiers.OnCallNotifier` (webhook and/or e-mail) and
carries the DAG, run, run type, deadline and a link, never the run's conf (it could hold anything).

Use in a DAG file (cheap to import: no I/O)::

    from caldicott_airflow.deadlines import daily_finish_by, submission_window

    @dag(schedule="0 6 * * *", ..., deadline=daily_finish_by(hour=10, scheduled_at=dt.time(6)))
    @dag(schedule="0 6 1 * *", ..., deadline=submission_window(alert_day=20, alert_hour=12))

Deadlines count from the run's **logical date**, which for a scheduled run is its scheduled time
(London, when the DAG's start_date is in Europe/London). A manual re-run of an old day or month has a
logical date in the past, so its deadline has already passed and it alerts at once; the alert says
``run_type: manual`` so on-call staff can tell.

``dag.test()`` / ``airflow dags test`` do not evaluate deadlines, and in Airflow 3.3.2 they crash when a
run with a DAG-level deadline *succeeds* (``DagRun.update_state`` looks the alerts up by id and gets
the SDK objects: ``'dict' object has no attribute 'hex'``). So the helpers return ``None`` (no
deadline) when ``CALDICOTT_DEADLINES=off``: set it for ``dag.test()``-based tests and local debugging,
never in a deployment (the dag-processor and scheduler must see the same DAG).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os

from airflow.sdk import AsyncCallback, DeadlineAlert, DeadlineReference

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


def deadlines_enabled() -> bool:
    """False when ``CALDICOTT_DEADLINES=off`` (for ``dag.test()``; see the module docs)."""
    return os.environ.get("CALDICOTT_DEADLINES", "on").strip().lower() not in ("off", "0", "false", "no")


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
    if not deadlines_enabled():
        return None
    return DeadlineAlert(reference=DeadlineReference.DAGRUN_LOGICAL_DATE, interval=due,
                         callback=_callback(alert, webhook_url, email), name=alert)


def submission_window(alert_day: int = 20, alert_hour: int = 12, *, scheduled_day: int = 1,
                      scheduled_at: dt.time = dt.time(0, 0), name: str | None = None,
                      webhook_url: str | None = None, email: str | None = None) -> DeadlineAlert | None:
    """Alert when the monthly run has not finished by day ``alert_day``, ``alert_hour``:00 of its month.

    The SDCS submission window opens on the 1st and closes about the 22nd-29th (published calendar):
    pick ``alert_day`` a few working days before this year's earliest close, so there is time to act.
    ``scheduled_day`` / ``scheduled_at`` are the DAG's schedule (``"0 6 1 * *"`` → 1, ``dt.time(6)``).
    """
    if not 1 <= scheduled_day < alert_day <= 28:
        raise ValueError("alert_day must be after the scheduled day and no later than the 28th")
    due = (dt.timedelta(days=alert_day - scheduled_day, hours=alert_hour)
           - dt.timedelta(hours=scheduled_at.hour, minutes=scheduled_at.minute))
    alert = name or f"monthly submission not finished by day {alert_day} {alert_hour:02d}:00"
    if not deadlines_enabled():
        return None
    return DeadlineAlert(reference=DeadlineReference.DAGRUN_LOGICAL_DATE, interval=due,
                         callback=_callback(alert, webhook_url, email), name=alert)
