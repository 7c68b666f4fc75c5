"""Issue 15's Airflow idioms, checked on the DAGs as the dag-processor builds them:

* every run setting is a declared Param, so a malformed value is refused when the run is created (the trigger
  form and the REST API), never deep in a task;
* every task has a time limit (``execution_timeout``), except Airflow's human-in-the-loop steps, whose wait is
  their own ``response_timeout``;
* ``records_quality`` produces the Asset the daily flows start on, with their old clock time as the fallback;
* ``gp_letters`` waits for acks in a rescheduling sensor, not ``time.sleep`` in a worker slot;
* each DAG survives serialization (what the scheduler actually runs).
"""

from __future__ import annotations

import ast
import datetime as dt
import os
from pathlib import Path

import pytest

os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"

DAGS = Path(__file__).resolve().parents[2] / "dags"
PLUGINS = Path(__file__).resolve().parents[2] / "plugins" / "caldicott_airflow"
DAILY = {"gp_letters": "0 6 * * *", "referrer_updates": "0 0 * * *"}
ASSET_URI = "caldicott://records_quality/checked"


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    return bag


def _is_hitl(task) -> bool:
    from airflow.providers.standard.operators.hitl import HITLOperator

    return isinstance(task, HITLOperator)


def test_every_task_has_a_time_limit(dagbag):
    for dag in dagbag.dags.values():
        for task in dag.tasks:
            where = f"{dag.dag_id}.{task.task_id}"
            if _is_hitl(task):   # a person's wait: bounded by response_timeout, never by a task time limit
                assert task.execution_timeout is None, f"{where}: HITL step must not carry execution_timeout"
                continue
            limit = task.execution_timeout
            assert limit is not None, f"{where}: no execution_timeout (dag_defaults.default_args sets one)"
            assert dt.timedelta(0) < limit <= dt.timedelta(hours=3), f"{where}: execution_timeout {limit}"


def test_daily_limits_fit_before_their_deadlines(dagbag):
    """Three hung tries (a retry each) must end before the deadline hour, so the alert is the failure, not silence."""
    for dag_id, window in {"gp_letters": dt.timedelta(hours=4), "records_quality": dt.timedelta(hours=6)}.items():
        for task in dagbag.dags[dag_id].tasks:
            worst = task.execution_timeout * (task.retries + 1)
            assert worst < window, f"{dag_id}.{task.task_id}: {worst} of hung tries exceeds {window}"


def test_records_quality_produces_the_asset_on_success(dagbag):
    scan = dagbag.dags["records_quality"].get_task("scan_records")
    assert [o.uri for o in scan.outlets] == [ASSET_URI]


@pytest.mark.parametrize("dag_id", sorted(DAILY))
def test_daily_flows_start_on_the_asset_or_the_clock(dagbag, dag_id):
    from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable

    timetable = dagbag.dags[dag_id].timetable
    assert isinstance(timetable, AssetOrTimeSchedule), timetable
    assert isinstance(timetable.timetable, CronTriggerTimetable)
    assert timetable.timetable.expression == DAILY[dag_id]
    assert str(timetable.timetable.timezone) == "Europe/London"
    condition = timetable.asset_condition
    assert getattr(condition, "uri", None) == ASSET_URI, condition


@pytest.mark.parametrize("dag_id", sorted(DAILY))
def test_the_clock_run_is_where_it_was(dagbag, dag_id):
    """The fallback keeps the old schedule: the next clock run after a given moment is unchanged."""
    import pendulum
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow.timetables.base import DataInterval, TimeRestriction

    dag = DagSerialization.from_dict(DagSerialization.to_dict(dagbag.dags[dag_id]))
    last = pendulum.datetime(2026, 10, 14, 6, tz="Europe/London")
    info = dag.timetable.next_dagrun_info(
        last_automated_data_interval=DataInterval(last, last),
        restriction=TimeRestriction(earliest=None, latest=None, catchup=True))
    hour = 6 if dag_id == "gp_letters" else 0
    assert info.logical_date == pendulum.datetime(2026, 10, 15, hour, tz="Europe/London")


def test_every_dag_round_trips_through_serialization(dagbag):
    from airflow.serialization.serialized_objects import DagSerialization

    for dag in dagbag.dags.values():
        again = DagSerialization.from_dict(DagSerialization.to_dict(dag))
        assert {t.task_id for t in again.tasks} == {t.task_id for t in dag.tasks}, dag.dag_id


# ---- Params: declared, validated at trigger time --------------------------------------------------------------

DECLARED = {
    "gp_letters": {"day", "start", "end", "ack_timeout_hours", "ack_wait_seconds"},
    "referrer_updates": {"day", "activity_month"},
    "records_quality": {"day"},
}


@pytest.mark.parametrize("dag_id", sorted(DECLARED))
def test_run_settings_are_declared_params(dagbag, dag_id):
    assert DECLARED[dag_id] <= set(dagbag.dags[dag_id].params), set(dagbag.dags[dag_id].params)


def test_monthly_dataset_declares_its_month(dagbag):
    assert "month" in dagbag.dags["monthly_dataset"].params


def _validate(dag, conf: dict) -> dict:
    """Exactly what ``DAG.create_dagrun`` does with a trigger's conf, on the DAG the scheduler and API server hold
    (the serialized one): a ValueError (ParamValidationError) refuses the run before it exists."""
    from airflow.serialization.serialized_objects import DagSerialization

    return DagSerialization.from_dict(DagSerialization.to_dict(dag)).params.deep_merge(conf).validate()


@pytest.mark.parametrize(("dag_id", "conf"), [
    ("gp_letters", {"day": "2026-13-01"}),
    ("gp_letters", {"start": "yesterday", "end": "2026-10-01"}),
    ("gp_letters", {"ack_wait_seconds": 3600}),
    ("gp_letters", {"ack_timeout_hours": -1}),
    ("referrer_updates", {"day": "14/10/2026"}),
    ("referrer_updates", {"activity_month": "2026-13"}),
    ("records_quality", {"day": "2026-02-30"}),
    ("monthly_dataset", {"month": "2026-9"}),
])
def test_a_malformed_setting_is_refused_before_the_run_exists(dagbag, dag_id, conf):
    with pytest.raises(ValueError, match="Invalid input for param"):
        _validate(dagbag.dags[dag_id], conf)


@pytest.mark.parametrize(("dag_id", "conf"), [
    ("gp_letters", {}),
    ("gp_letters", {"day": "2026-10-14"}),
    ("gp_letters", {"start": "2025-06-01", "end": "2026-08-01", "ack_timeout_hours": 0, "ack_wait_seconds": 120}),
    ("referrer_updates", {}),
    ("referrer_updates", {"day": "2026-10-14", "activity_month": "2026-09"}),
    ("records_quality", {}),
    ("monthly_dataset", {}),
    ("monthly_dataset", {"month": "2026-09"}),
])
def test_a_scheduled_run_and_good_settings_pass(dagbag, dag_id, conf):
    resolved = _validate(dagbag.dags[dag_id], conf)
    for key, value in conf.items():
        assert resolved[key] == value


# ---- no sleeping in a worker slot; no conf reads behind the Params' back ---------------------------------------

def _calls(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute):
            names.append(node.attr)
    return names


def test_gp_letters_waits_in_a_rescheduling_sensor_not_a_sleep(dagbag):
    dag = dagbag.dags["gp_letters"]
    sensor = dag.get_task("await_acks")
    assert sensor.mode == "reschedule" and sensor.timeout > 0
    assert sensor.downstream_task_ids == {"check_acks"} and sensor.upstream_task_ids == {"report"}
    for path in (DAGS / "gp_letters.py", PLUGINS / "gp_acks.py"):
        assert "sleep" not in _calls(path), f"{path.name} sleeps"


@pytest.mark.parametrize("path", sorted([*DAGS.glob("*.py"), PLUGINS / "intervals.py", PLUGINS / "dataset.py"]),
                         ids=lambda p: p.name)
def test_tasks_read_run_settings_through_params_not_conf(path):
    """``dag_run.conf`` bypasses the Params' validation; only the scheduler-side deadline reference may read it."""
    assert "conf" not in _calls(path), f"{path.name} reads dag_run.conf"
