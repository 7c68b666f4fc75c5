"""The data set's human step without a scheduler: no default answer, skipped when the month went by an
automatic route, a wait taken from the run, and a timeout that fails without retry (so on-call is alerted)
instead of recording anything; the DAG wires it so record_submission still runs after a skip."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")


class _Ti:
    dag_id, run_id, task_id = "monthly_dataset", "r1", "confirm_submission"

    def __init__(self, staged: dict) -> None:
        self.staged = staged

    def xcom_pull(self, task_ids):
        assert task_ids == "stage_submission"
        return self.staged


def _op(**kw):
    from caldicott_airflow.dataset import SubmissionConfirmOperator

    return SubmissionConfirmOperator(task_id="confirm_submission", **kw)


def test_one_option_no_default_and_the_reference_form():
    op = _op()
    assert op.options == ["Uploaded"] and op.defaults is None
    assert set(op.params) == {"submission_reference"}
    assert "stage_submission" in op.subject and "SDCS Cloud portal" in op.body
    with pytest.raises(ValueError, match="no default"):
        _op(defaults="Uploaded")


def test_skipped_when_the_month_went_automatically():
    from airflow.sdk.exceptions import AirflowSkipException

    ti = _Ti({"run_key": "2026-09", "route": "mesh", "automatic": True})
    with pytest.raises(AirflowSkipException, match="2026-09 went automatically by mesh"):
        _op().execute({"ti": ti, "task_instance": ti, "params": {}})


def test_wait_comes_from_the_run():
    from caldicott_airflow.dataset import DEFAULT_CONFIRM_TIMEOUT_MINUTES, confirm_timeout_minutes

    assert confirm_timeout_minutes({"params": {}}) == DEFAULT_CONFIRM_TIMEOUT_MINUTES == 25 * 24 * 60
    assert confirm_timeout_minutes({"params": {"confirm_timeout_minutes": 90}}) == 90
    assert confirm_timeout_minutes({"params": {"confirm_timeout_minutes": 90},
                                    "dag_run": SimpleNamespace(conf={"confirm_timeout_minutes": 0.5})}) == 0.5


def test_timeout_fails_without_retry_and_records_nothing():
    from airflow.sdk.exceptions import AirflowFailException

    ti = _Ti({"run_key": "2026-09", "route": "staged", "automatic": False})
    ctx = {"ti": ti, "task_instance": ti, "params": {"confirm_timeout_minutes": 0.5}}
    with pytest.raises(AirflowFailException, match=r"2026-09 within 0\.5 minutes: the month is NOT confirmed"):
        _op().execute_complete(ctx, {"error": "timed out", "error_type": "timeout"})


def test_an_answer_is_passed_on():
    import datetime as dt

    ti = _Ti({"run_key": "2026-09", "automatic": False})
    event = {"chosen_options": ["Uploaded"], "params_input": {"submission_reference": "SDCS-1"},
             "responded_at": dt.datetime.now(dt.UTC), "responded_by_user": {"id": "sub", "name": "sub"}}
    out = _op().execute_complete({"ti": ti, "params": {}}, event)
    assert out["params_input"] == {"submission_reference": "SDCS-1"} and out["chosen_options"] == ["Uploaded"]


def test_dag_wiring():
    from airflow.dag_processing.dagbag import DagBag

    from devtools.paths import ROOT

    bag = DagBag(dag_folder=str(ROOT / "dags" / "monthly_dataset.py"))
    assert not bag.import_errors
    dag = bag.dags["monthly_dataset"]
    assert dag.params["submission_route"] == "configured" and dag.params["confirm_timeout_minutes"] == 36000
    confirm, record = dag.get_task("confirm_submission"), dag.get_task("record_submission")
    assert type(confirm).__name__ == "SubmissionConfirmOperator" and confirm.retries == 3
    assert record.trigger_rule == "none_failed" and record.upstream_task_ids == {"confirm_submission"}
