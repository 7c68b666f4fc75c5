"""The data set's human step without a scheduler, one per submission (primary, refresh): no default answer, skipped
when the submission went by an automatic route or is already confirmed (reported with its reference, never asked
again), a wait until the window closes (or the run's explicit timeout), and a timeout that fails without retry and
alerts on-call naming the period and kind; the run's plan from the calendar (a month outside it, a run before the
DAG's start); the DAG wires two groups so record_submission still runs after a skip."""

from __future__ import annotations

import datetime as dt
import json
import os
from types import SimpleNamespace

import pytest

os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")


class _Ti:
    dag_id, run_id, task_id = "monthly_dataset", "r1", "confirm_submission"

    def __init__(self, staged: dict) -> None:
        self.staged = staged

    def xcom_pull(self, task_ids):
        assert task_ids == "primary.stage_submission"
        return self.staged


STAGED = {"run_key": "2026-09", "kind": "primary", "route": "staged", "automatic": False, "confirmed": False,
          "window_closes": "2026-10-27", "window_closes_at": "2026-10-27T23:00:00+00:00"}


def _op(**kw):
    from caldicott_airflow.dataset import SubmissionConfirmOperator

    return SubmissionConfirmOperator(task_id="confirm_submission", stage_task_id="primary.stage_submission", **kw)


@pytest.fixture
def oncall(webhook, monkeypatch):
    monkeypatch.setenv("CALDICOTT_ONCALL_WEBHOOK", webhook.url)
    monkeypatch.delenv("CALDICOTT_ONCALL_EMAIL", raising=False)
    return webhook


def _alerts(hook) -> list[dict]:
    return [json.loads(m["body"]) for m in hook.received]


def test_one_option_no_default_and_the_reference_form():
    op = _op(kind="refresh")
    assert op.options == ["Uploaded"] and op.defaults is None
    assert set(op.params) == {"submission_reference"}
    assert "primary.stage_submission" in op.subject and "(refresh submission)" in op.subject
    assert "SDCS Cloud portal" in op.body and "caldicott.dataset.writer idb" in op.body
    with pytest.raises(ValueError, match="no default"):
        _op(defaults="Uploaded")


def test_skipped_when_the_submission_went_automatically():
    from airflow.sdk.exceptions import AirflowSkipException

    ti = _Ti({**STAGED, "route": "mesh", "automatic": True})
    with pytest.raises(AirflowSkipException, match="2026-09 primary went automatically by mesh"):
        _op().execute({"ti": ti, "task_instance": ti, "params": {}})


def test_a_confirmed_submission_is_reported_with_its_reference_and_not_asked_again():
    """The demo's second run: stage_submission said already_sent, and the human step must not ask again."""
    from airflow.sdk.exceptions import AirflowSkipException

    ti = _Ti({**STAGED, "already_sent": 1, "confirmed": True, "submission_reference": "SDCS-DEMO-2609"})
    with pytest.raises(AirflowSkipException, match=r"2026-09 primary is already confirmed \(reference "
                                                   r"SDCS-DEMO-2609\); not asked again"):
        _op().execute({"ti": ti, "task_instance": ti, "params": {}})


def test_the_wait_is_until_the_window_closes_unless_the_run_says_otherwise():
    from caldicott_airflow.dataset import DEFAULT_CONFIRM_TIMEOUT_MINUTES, confirm_timeout_minutes, confirm_wait

    closes = dt.datetime(2026, 10, 27, 23, tzinfo=dt.UTC)
    now = dt.datetime(2026, 10, 2, 6, tzinfo=dt.UTC)
    assert confirm_timeout_minutes({"params": {}}) == DEFAULT_CONFIRM_TIMEOUT_MINUTES == 0
    assert confirm_wait({"params": {}}, closes, now) == closes - now
    assert confirm_wait({"params": {}}, closes, closes) is None                      # closed already
    assert confirm_timeout_minutes({"params": {"confirm_timeout_minutes": 90}}) == 90
    # a run's conf reaches the task only as params (Airflow validates it against the Param and merges it)
    ctx = {"params": {"confirm_timeout_minutes": 0.5}}
    assert confirm_timeout_minutes(ctx) == 0.5 and confirm_wait(ctx, closes, closes) == dt.timedelta(seconds=30)


def test_a_closed_window_fails_at_once_and_alerts_naming_period_and_kind(oncall):
    from airflow.sdk.exceptions import AirflowFailException

    ti = _Ti({**STAGED, "window_closes_at": "2020-01-01T00:00:00+00:00"})
    with pytest.raises(AirflowFailException, match="2026-09 primary: the submission window closed on 2026-10-27 "
                                                   "before the upload was confirmed"):
        _op().execute({"ti": ti, "task_instance": ti, "params": {}})
    [msg] = _alerts(oncall)
    assert (msg["kind"], msg["period"], msg["submission"], msg["window_closes"]) == (
        "submission_window_missed", "2026-09", "primary", "2026-10-27")


def test_timeout_fails_without_retry_and_records_nothing(oncall):
    from airflow.sdk.exceptions import AirflowFailException

    ti = _Ti(STAGED)
    ctx = {"ti": ti, "task_instance": ti, "params": {"confirm_timeout_minutes": 0.5}}
    with pytest.raises(AirflowFailException, match=r"2026-09 primary within 0\.5 minutes: the submission is NOT "
                                                   r"confirmed"):
        _op().execute_complete(ctx, {"error": "timed out", "error_type": "timeout"})
    assert _alerts(oncall) == []          # an explicit wait ran out: the task failure alerts, not a missed window
    ctx = {"ti": ti, "task_instance": ti, "params": {}}
    with pytest.raises(AirflowFailException, match="before its window closed on 2026-10-27: the submission missed"):
        _op(kind="refresh").execute_complete(ctx, {"error": "timed out", "error_type": "timeout"})
    assert [(m["kind"], m["submission"]) for m in _alerts(oncall)] == [("submission_window_missed", "refresh")]


def test_an_answer_is_passed_on():
    ti = _Ti({"run_key": "2026-09", "automatic": False})
    event = {"chosen_options": ["Uploaded"], "params_input": {"submission_reference": "SDCS-1"},
             "responded_at": dt.datetime.now(dt.UTC), "responded_by_user": {"id": "sub", "name": "sub"}}
    out = _op().execute_complete({"ti": ti, "params": {}}, event)
    assert out["params_input"] == {"submission_reference": "SDCS-1"} and out["chosen_options"] == ["Uploaded"]


def test_dag_wiring(monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    from devtools.paths import ROOT

    monkeypatch.delenv("CALDICOTT_DATASET_ALERT_LEAD_HOURS", raising=False)
    bag = DagBag(dag_folder=str(ROOT / "dags" / "monthly_dataset.py"))
    assert not bag.import_errors
    dag = bag.dags["monthly_dataset"]
    assert dag.params["submission_route"] == "configured" and dag.params["confirm_timeout_minutes"] == 0
    assert "intermediate_db" not in dag.params and dag.params["provider_name"] == ""
    for kind in ("primary", "refresh"):
        build, confirm, record = (dag.get_task(f"{kind}.{t}") for t in ("build_validate_write", "confirm_submission",
                                                                         "record_submission"))
        assert build.upstream_task_ids == {"plan_submissions"}
        assert type(confirm).__name__ == "SubmissionConfirmOperator" and confirm.retries == 3
        assert confirm.stage_task_id == f"{kind}.stage_submission" and confirm.kind == kind
        assert record.trigger_rule == "none_failed" and record.upstream_task_ids == {f"{kind}.confirm_submission"}
    ndop = dag.get_task("ndop_request")
    assert ndop.upstream_task_ids == {"primary.build_validate_write", "refresh.build_validate_write"}
    assert ndop.trigger_rule == "all_done"
    # the deadline: the close of each run's own window (a reference computed per run), less the lead
    [deadline] = dag.deadline if isinstance(dag.deadline, list) else [dag.deadline]
    assert type(deadline.reference).__name__ == "SubmissionWindowClose"
    assert deadline.interval == -dt.timedelta(hours=72)
    assert deadline.callback.path == "caldicott_airflow.deadlines.deadline_missed"


# ---- the run's plan --------------------------------------------------------------------------------------------

NEXT_CALENDAR = ("window_opens\twindow_closes\trefresh_period\tprimary_period\n"
                 "2026-10-01\t2026-10-27\t2026-08\t2026-09\n2026-11-01\t2026-11-24\t2026-09\t2026-10\n")


def _context(logical: dt.datetime, conf: dict | None = None):
    import pendulum

    dag = SimpleNamespace(start_date=pendulum.datetime(2026, 10, 1, 6, tz="Europe/London"))
    at = pendulum.instance(logical)
    ti = SimpleNamespace(dag_id="monthly_dataset", run_id="r1", task_id="plan_submissions")
    return {"dag": dag, "logical_date": at, "data_interval_start": at, "data_interval_end": at,
            # as Airflow resolves them: the run's conf merged into the DAG's params
            "params": {"month": None, **(conf or {})},
            "dag_run": SimpleNamespace(conf=conf or {}), "ti": ti, "task_instance": ti}


def test_plan_takes_both_submissions_from_the_calendar(monkeypatch):
    from caldicott_airflow.dataset import plan, window_of

    monkeypatch.setenv("AIRFLOW_VAR_CALDICOTT_DATASET_CALENDAR", NEXT_CALENDAR)
    planned = plan(_context(dt.datetime(2026, 11, 1, 6, tzinfo=dt.UTC)))
    assert planned["period"] == "2026-10" and planned["submissions"] == {"primary": "2026-10", "refresh": "2026-09"}
    assert planned["window"]["closes"] == "2026-11-24" and planned["calendar"] == "Variable caldicott_dataset_calendar"
    assert window_of(planned).closes == dt.date(2026, 11, 24)
    manual = plan(_context(dt.datetime(2026, 12, 6, 3, tzinfo=dt.UTC), {"month": "2026-09"}))
    assert manual["submissions"] == {"primary": "2026-09", "refresh": "2026-08"} and manual["notes"] == []


def test_a_month_outside_the_calendar_fails_clearly(monkeypatch):
    from airflow.sdk.exceptions import AirflowFailException
    from caldicott_airflow.dataset import plan

    monkeypatch.delenv("AIRFLOW_VAR_CALDICOTT_DATASET_CALENDAR", raising=False)
    monkeypatch.delenv("CALDICOTT_DATASET_CALENDAR", raising=False)
    with pytest.raises(AirflowFailException, match=r"reporting period 2026-10 \(primary\) is not in the submission "
                                                   r"calendar \(bundled default"):
        plan(_context(dt.datetime(2026, 11, 1, 6, tzinfo=dt.UTC)))


def test_a_run_before_the_dags_start_does_not_pass_for_a_submission(monkeypatch, oncall):
    from airflow.sdk.exceptions import AirflowFailException
    from caldicott_airflow.dataset import plan

    monkeypatch.setenv("AIRFLOW_VAR_CALDICOTT_DATASET_CALENDAR", NEXT_CALENDAR)
    with pytest.raises(AirflowFailException, match="precedes the DAG's start 2026-10-01: no reporting month is due"):
        plan(_context(dt.datetime(2026, 5, 1, 5, tzinfo=dt.UTC)))
    [msg] = _alerts(oncall)
    assert msg["kind"] == "dataset_run_before_start" and msg["dag_start"].startswith("2026-10-01")
    named = plan(_context(dt.datetime(2026, 5, 1, 5, tzinfo=dt.UTC), {"month": "2026-09"}))
    assert named["period"] == "2026-09" and "precedes the DAG's start" in named["notes"][0]


# ---- the DAG's record step: a confirmation is immutable ----------------------------------------------------------

class _RunTi:
    """The XComs record_submission reads: the plan, its stage result and the submitter's answer."""

    dag_id, run_id, task_id = "monthly_dataset", "r2", "primary.record_submission"

    def __init__(self, values: dict) -> None:
        self.values = values

    def xcom_pull(self, task_ids):
        return self.values[task_ids]


def test_a_second_reference_is_refused_and_alerts(synth_source, tmp_path, monkeypatch, oncall):
    """The demo's finding: a re-run asked again and its answer overwrote submitted_at. Now the answer of a second
    run with another reference is refused, nothing changes, and on-call hears which submission."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.exceptions import AirflowFailException
    from caldicott.dataset import pipeline, state_tables
    from caldicott.dataset.builder import Period
    from caldicott.dataset.submit import resolve_target, submit
    from caldicott.dataset.writer import load_key, new_key
    from caldicott.db import make_engine, sqlite_url
    from caldicott.state.migrate import migrate
    from caldicott.transport.staging import StagingSender

    from devtools.paths import ROOT

    url = sqlite_url(tmp_path / "state.db")
    state = make_engine(url)
    migrate(state)
    sept = Period.month(2026, 9)
    s = pipeline.Settings(org_provider="ZZZ01", work_dir=tmp_path / "work", key=load_key(new_key()))
    pipeline.build_validate_write(synth_source.engine, state, sept, s)
    submit(state, sept, resolve_target("staged", None, submitter=s.submitter), StagingSender(tmp_path / "staging"))
    pipeline.confirm(state, sept, "SDCS-FIRST-1", "submitter")
    before = state_tables.get(state, "2026-09")
    monkeypatch.setenv("AIRFLOW_CONN_CALDICOTT_STATE", json.dumps({"conn_type": "sqlite",
                                                                   "extra": {"sqlalchemy_url": url}}))
    record = DagBag(dag_folder=str(ROOT / "dags" / "monthly_dataset.py")).dags["monthly_dataset"].get_task(
        "primary.record_submission").python_callable
    plan = {"period": "2026-09", "submissions": {"primary": "2026-09", "refresh": "2026-08"},
            "window": {"closes": "2026-10-27"}}
    ti = _RunTi({"plan_submissions": plan,
                 "primary.stage_submission": {**STAGED, "already_sent": 1, "confirmed": False},
                 "primary.confirm_submission": {"chosen_options": ["Uploaded"],
                                                "params_input": {"submission_reference": "SDCS-OTHER-2"},
                                                "responded_by_user": {"id": "x", "name": "someone"}}})
    with pytest.raises(AirflowFailException, match="a confirmation cannot be changed"):
        record("primary", ti=ti, task_instance=ti, params={})
    after = state_tables.get(state, "2026-09")
    assert (after["submission_reference"], after["submitted_at"]) == ("SDCS-FIRST-1", before["submitted_at"])
    [msg] = _alerts(oncall)
    assert (msg["kind"], msg["period"], msg["submission"]) == ("submission_confirmation_refused", "2026-09", "primary")
    # the same reference again is no change at all, and succeeds
    ti.values["primary.confirm_submission"]["params_input"]["submission_reference"] = "SDCS-FIRST-1"
    out = record("primary", ti=ti, task_instance=ti, params={})
    assert out["already_confirmed"] and state_tables.get(state, "2026-09")["submitted_at"] == before["submitted_at"]
