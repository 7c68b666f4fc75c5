"""Deadline alerts: how the helpers build them, that a DAG carrying them serialises, and that the
callback, run the way the triggerer runs it, alerts on-call staff without the run's conf.

The monthly data set's alert is computed per run from NHS England's calendar: a custom deadline reference
(registered through a plugin, as Airflow 3.3 requires) returns the close of the run's own window, and the alert
fires the configured lead before it."""

from __future__ import annotations

import asyncio
import datetime as dt
import json

import pendulum
import pytest
from airflow.sdk import DAG, AsyncCallback, DeadlineReference
from airflow.triggers.callback import CallbackTrigger
from caldicott_airflow.deadlines import daily_finish_by, submission_window, submission_window_close


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


def test_only_the_tests_can_run_dags_without_their_deadlines():
    """``airflow dags test`` needs DAGs without deadlines (Airflow 3.3.2 bug): the tests' own sitecustomize strips
    them in that subprocess; the production code has no switch, so anything else sees the alerts."""
    import os
    import subprocess
    import sys

    from devtools.paths import PLUGINS, ROOT
    from tests.dagtest import without_deadlines

    code = ("from caldicott_airflow.deadlines import daily_finish_by, submission_window_close; "
            "print(daily_finish_by(hour=9) is None, submission_window_close() is None)")
    base = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PLUGINS), str(ROOT / "include"), str(ROOT)])}
    plain = subprocess.run([sys.executable, "-c", code], env=base, capture_output=True, text=True, check=True)
    stripped = subprocess.run([sys.executable, "-c", code], env=without_deadlines(base), capture_output=True,
                              text=True, check=True)
    assert plain.stdout.split() == ["False", "False"], plain.stderr[-2000:]
    assert stripped.stdout.split() == ["True", "True"], stripped.stderr[-2000:]


def test_deadline_callback_returns_text_the_triggerer_can_store(monkeypatch):
    """Airflow stores the callback's return value; a dict crashed the triggerer on SQLite (seen in the demo)."""
    import asyncio

    from caldicott_airflow.deadlines import deadline_missed

    monkeypatch.delenv("CALDICOTT_ONCALL_WEBHOOK", raising=False)
    monkeypatch.delenv("CALDICOTT_ONCALL_EMAIL", raising=False)
    out = asyncio.run(deadline_missed("gp_letters not finished by 10:00",
                                      context={"dag_run": {"dag_id": "gp_letters", "dag_run_id": "r1"}}))
    assert isinstance(out, str) and out.startswith("gp_letters not finished by 10:00")


# ---- the submission window, per run, from the calendar ----------------------------------------------------------

CALENDAR = ("window_opens\twindow_closes\trefresh_period\tprimary_period\n"
            "2026-10-01\t2026-10-27\t2026-08\t2026-09\n2026-11-01\t2026-11-24\t2026-09\t2026-10\n")


class _Session:
    """What ``_evaluate_with`` needs of the scheduler's session: the run, by dag and run id."""

    def __init__(self, run):
        self.run = run

    def scalar(self, _query):
        return self.run


def _run(logical: dt.datetime, conf: dict | None = None):
    from types import SimpleNamespace

    return SimpleNamespace(logical_date=logical, run_after=logical, data_interval_start=logical,
                           data_interval_end=logical, conf=conf or {})


def test_submission_window_close_is_a_lead_before_the_close(monkeypatch):
    from caldicott_airflow.deadlines import SubmissionWindowClose

    monkeypatch.delenv("CALDICOTT_DATASET_ALERT_LEAD_HOURS", raising=False)
    alert = submission_window_close()
    assert isinstance(alert.reference, SubmissionWindowClose) and alert.interval == -dt.timedelta(hours=72)
    assert alert.name == "monthly data set not submitted 72 h before the submission window closes"
    assert alert.callback.path == "caldicott_airflow.deadlines.deadline_missed"
    monkeypatch.setenv("CALDICOTT_DATASET_ALERT_LEAD_HOURS", "36")
    assert submission_window_close().interval == -dt.timedelta(hours=36)
    monkeypatch.setenv("CALDICOTT_DATASET_ALERT_LEAD_HOURS", "9999")
    with pytest.raises(ValueError, match="between 0 and 672"):
        submission_window_close()
    with pytest.raises(ValueError, match="must not be negative"):
        submission_window_close(lead=-dt.timedelta(hours=1))


def test_the_reference_is_registered_and_evaluated_per_run(monkeypatch):
    """What the scheduler does when it creates a run: decode the DAG's reference, find the plugin's class, evaluate
    it for this run (its month's window from the calendar Variable), add the (negative) interval."""
    from airflow.serialization.decoders import decode_deadline_reference
    from airflow.serialization.encoders import encode_deadline_reference
    from caldicott_airflow import deadlines

    monkeypatch.setattr("airflow.serialization.helpers.find_registered_custom_deadline_reference",
                        lambda path: {"caldicott_airflow.deadlines.SubmissionWindowClose":
                                      deadlines.SubmissionWindowClose}[path])
    assert [c.__module__ for c in deadlines.CaldicottDeadlinesPlugin.deadline_references] == \
        ["caldicott_airflow.deadlines"]                                    # the class the DAG serialises
    monkeypatch.setenv("AIRFLOW_VAR_CALDICOTT_DATASET_CALENDAR", CALENDAR)
    encoded = encode_deadline_reference(submission_window_close(lead=dt.timedelta(hours=48)).reference)
    assert encoded["__class_path"] == "caldicott_airflow.deadlines.SubmissionWindowClose"
    ref = decode_deadline_reference(encoded)
    lead = -dt.timedelta(hours=48)
    scheduled = _run(dt.datetime(2026, 11, 1, 6, tzinfo=dt.UTC))        # takes October: closes 24 Nov
    assert ref.evaluate_with(session=_Session(scheduled), interval=lead, dag_id="monthly_dataset", run_id="r") == \
        dt.datetime(2026, 11, 25, 0, tzinfo=dt.UTC) - dt.timedelta(hours=48)
    manual = _run(dt.datetime(2026, 12, 6, 3, tzinfo=dt.UTC), {"month": "2026-09"})   # its conf's month: 27 Oct
    assert ref.evaluate_with(session=_Session(manual), interval=lead, dag_id="monthly_dataset", run_id="r") == \
        dt.datetime(2026, 10, 28, 0, 0, tzinfo=dt.UTC) - dt.timedelta(hours=48)        # end of day (GMT from 25 Oct)
    # a month the calendar does not hold: no deadline (never an exception in the run's creation)
    outside = _run(dt.datetime(2027, 6, 1, 5, tzinfo=dt.UTC))
    assert ref.evaluate_with(session=_Session(outside), interval=lead, dag_id="monthly_dataset", run_id="r") is None
    assert ref.evaluate_with(session=_Session(None), interval=lead, dag_id="monthly_dataset", run_id="r") is None


def test_the_plugin_loads_from_the_plugins_folder(tmp_path):
    """Airflow loads every file of plugins/ as a module of its own name; the plugin must still register the class
    the DAG files import, and load without errors."""
    import subprocess
    import sys

    from devtools.paths import PLUGINS, ROOT

    code = ("from airflow import plugins_manager as p; "
            "print(sorted(p.get_deadline_references_plugins())); print(p._get_plugins()[1])")
    env = {**__import__("os").environ, "AIRFLOW__CORE__PLUGINS_FOLDER": str(PLUGINS), "AIRFLOW_HOME": str(tmp_path),
           "PYTHONPATH": f"{ROOT / 'include'}:{PLUGINS}:{ROOT}"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines()[-2:] == ["['caldicott_airflow.deadlines.SubmissionWindowClose']", "{}"]
