"""Deadline alerts: how the helpers build them, that a DAG carrying them serialises, and that the
callback, run the way the triggerer runs it, alerts on-call staff without the run's conf."""

from __future__ import annotations

import asyncio
import datetime as dt
import json

import pendulum
import pytest
from airflow.sdk import DAG, AsyncCallback, DeadlineReference
from airflow.triggers.callback import CallbackTrigger
from caldicott_airflow.deadlines import daily_finish_by, submission_window


def test_daily_finish_by_counts_from_the_scheduled_time():
    alert = daily_finish_by(hour=10, minute=30, scheduled_at=dt.time(6))
    assert alert.reference == DeadlineReference.DAGRUN_LOGICAL_DATE
    assert alert.interval == dt.timedelta(hours=4, minutes=30)
    assert isinstance(alert.callback, AsyncCallback)
    assert alert.callback.path == "caldicott_airflow.deadlines.deadline_missed"
    assert alert.callback.kwargs == {"alert": "daily run not finished by 10:30"}
    with pytest.raises(ValueError, match="after the scheduled time"):
        daily_finish_by(hour=5, scheduled_at=dt.time(6))


def test_submission_window_alerts_days_before_the_close():
    alert = submission_window(alert_day=20, alert_hour=12, scheduled_at=dt.time(6))
    assert alert.interval == dt.timedelta(days=19, hours=6)
    assert alert.callback.kwargs["alert"] == "monthly submission not finished by day 20 12:00"
    with pytest.raises(ValueError):
        submission_window(alert_day=30)


def test_a_dag_with_deadlines_serialises():
    from airflow.serialization.serialized_objects import DagSerialization

    with DAG("deadline_probe", schedule="0 6 * * *", start_date=pendulum.datetime(2026, 10, 1, tz="Europe/London"),
             deadline=[daily_finish_by(hour=10, scheduled_at=dt.time(6))]) as dag:
        pass
    data = DagSerialization.to_dict(dag)
    assert "caldicott_airflow.deadlines.deadline_missed" in json.dumps(data, default=str)


def test_deadline_callback_through_the_callback_trigger(webhook, monkeypatch):
    monkeypatch.delenv("CALDICOTT_ONCALL_EMAIL", raising=False)
    alert = daily_finish_by(hour=9, scheduled_at=dt.time(6), webhook_url=webhook.url)
    context = {  # what the scheduler hands the triggerer (airflow.models.deadline.Deadline.handle_miss)
        "dag_run": {"dag_id": "gp_letters", "dag_run_id": "scheduled__2026-11-02T06:00:00+00:00",
                    "run_type": "scheduled", "state": "running", "logical_date": "2026-11-02T06:00:00Z",
                    "conf": {"note": "9991914722 Olivia Green"}},
        "deadline": {"id": "d1", "deadline_time": "2026-11-02T09:00:00Z"},
    }
    trigger = CallbackTrigger(alert.callback.path, {**alert.callback.kwargs, "context": context})

    async def run():
        return [e async for e in trigger.run()]

    events = asyncio.run(run())
    assert events[-1].payload["state"] == "success", events[-1].payload
    msg = json.loads(webhook.received[0]["body"])
    assert msg["kind"] == "deadline_missed" and msg["alert"] == "daily run not finished by 09:00"
    assert msg["dag_id"] == "gp_letters" and msg["run_type"] == "scheduled"
    assert msg["deadline"] == "2026-11-02T09:00:00Z"
    raw = webhook.received[0]["body"].decode()
    assert "9991914722" not in raw and "Olivia" not in raw  # the run's conf never travels


def test_deadlines_can_be_switched_off_for_dag_test(monkeypatch):
    monkeypatch.setenv("CALDICOTT_DEADLINES", "off")
    assert daily_finish_by(hour=9) is None and submission_window() is None
    monkeypatch.setenv("CALDICOTT_DEADLINES", "on")
    assert daily_finish_by(hour=9) is not None


def test_deadline_callback_returns_text_the_triggerer_can_store(monkeypatch):
    """Airflow stores the callback's return value; a dict crashed the triggerer on SQLite (seen in the demo)."""
    import asyncio

    from caldicott_airflow.deadlines import deadline_missed

    monkeypatch.delenv("CALDICOTT_ONCALL_WEBHOOK", raising=False)
    monkeypatch.delenv("CALDICOTT_ONCALL_EMAIL", raising=False)
    out = asyncio.run(deadline_missed("gp_letters not finished by 10:00",
                                      context={"dag_run": {"dag_id": "gp_letters", "dag_run_id": "r1"}}))
    assert isinstance(out, str) and out.startswith("gp_letters not finished by 10:00")
