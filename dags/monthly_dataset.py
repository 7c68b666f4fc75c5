"""
### Monthly data set (IAPT / NHS Talking Therapies v2.x)

One run per submission window (Europe/London), scheduled on the 1st; catch-up and backfill run older windows.
Required by law (Data Provision Notice, s259(5) HSCA 2012). NHS England takes every month twice: as a **primary**
submission in the window after it and as a **refresh** (the whole month again, with later data) in the next
window. So each run builds and sends two submissions, each with its own archive, ledger item, report and
reference: the run's month (primary) and the month before (refresh), as NHS England's calendar says.

1. **plan_submissions** — the run's month (Param `month`, YYYY-MM, else the month before the logical date) and its
   window from the submission calendar (Variable `caldicott_dataset_calendar`, else the file in
   `CALDICOTT_DATASET_CALENDAR`, else the bundled default). A month the calendar does not hold fails, naming it;
   so does a run whose logical date precedes the DAG's start without a `month` in its conf.
2. **primary / refresh**, one group per submission:
   * **build_validate_write** — builds IDS000 ... IDS607 from `caldicott_records`, applies the pre-September-2020
     objection rule, validates (vectorised rule catalogue), quarantines every record that would reject the file or
     be rejected (with its rule code), writes the archive (Parquet + IDB CSV per table + manifest), AES-256-GCM
     encrypted, and the report. A month with no referral fails and alerts (NHS England rejects an empty file); a
     submission whose window has closed before it left fails as missed; one that already left is not rebuilt.
   * **stage_submission** — sends the archive through the release gateway (purpose `mandated_dataset`), exactly
     once per submission, by the run's route: `staged` for the named submitter, or `mesh` / `sftp` to an
     intermediary (docs/monthly_dataset.md). A re-run reports what went.
   * **confirm_submission** — staged route only — *Required Actions*: the submitter uploads and enters the SDCS
     reference. Skipped after an automatic route and for a submission already confirmed (reported with its
     reference, never asked again). Waits until the window closes (or `confirm_timeout_minutes`), then fails and
     alerts, naming the period and kind.
   * **record_submission** — stores the reference once (a second, different one is refused and alerts).
3. **ndop_request → ndop_reply → commissioner_extract** — the national data opt-out does not apply to the
   mandated submissions (NDOP patients are kept, and the reports say how many) but does apply to the commissioner
   extract of the primary month; the check goes to NHS England over MESH through the release gateway.

A deadline alert fires a configurable lead (default 72 h, `CALDICOTT_DATASET_ALERT_LEAD_HOURS`) before the close of
the run's window, computed per run from the calendar.

* **XCom / logs / HITL text:** counts, rule codes, reporting months, kinds and file names only.
* **Safe to re-run:** quarantine, ledger and submission register are keyed by month and kind.
"""

from __future__ import annotations

import datetime as dt

import pendulum
from airflow.sdk import Param, TaskGroup, dag, task
from caldicott_airflow.dag_defaults import COMMON_TAGS, default_args
from caldicott_airflow.dataset import DEFAULT_CONFIRM_TIMEOUT_MINUTES, SubmissionConfirmOperator
from caldicott_airflow.deadlines import submission_window_close
from caldicott_airflow.intervals import MONTH_SCHEMA

DAG_ID = "monthly_dataset"
PLAN = "plan_submissions"
KINDS = ("primary", "refresh")


def _plan(context) -> dict:
    return context["ti"].xcom_pull(task_ids=PLAN)


def _period(context, kind: str = "primary"):
    from caldicott.dataset.builder import Period

    year, month = (int(x) for x in _plan(context)["submissions"][kind].split("-"))
    return Period.month(year, month)


def _fail_and_alert(context, exc: Exception, kind: str | None = None):
    """A failure a person must act on: a structured alert naming period and kind, then fail without retry."""
    from airflow.sdk.exceptions import AirflowFailException
    from caldicott.dataset.pipeline import EmptyMonth
    from caldicott.dataset.state_tables import ConfirmationConflict
    from caldicott.dataset.submit import WindowMissed
    from caldicott_airflow.dataset import alert

    planned = _plan(context)
    period = planned["submissions"].get(kind) if kind else planned["period"]
    what = {WindowMissed: "submission_window_missed", EmptyMonth: "dataset_month_empty",
            ConfirmationConflict: "submission_confirmation_refused"}.get(type(exc))
    if what:
        alert(context, what, period=period, submission=kind, window_closes=planned["window"]["closes"])
    return AirflowFailException(str(exc))


@dag(
    dag_id=DAG_ID,
    schedule="0 6 1 * *",
    start_date=pendulum.datetime(2026, 10, 1, tz="Europe/London"),
    catchup=True,
    max_active_runs=1,
    doc_md=__doc__,
    tags=[*COMMON_TAGS, "dataset", "mandated"],
    # a national-scale month builds in about two minutes a submission (bench/RESULTS.md), but the archive goes to the
    # intermediary over links we do not control, and the window is weeks long: two hours a try before a retry
    default_args=default_args(execution_timeout=dt.timedelta(hours=2)),
    deadline=submission_window_close(),
    params={
        "month": Param(None, **MONTH_SCHEMA, description="reporting month to build and submit (primary), YYYY-MM; "
                                                         "default: the month before the run's logical date"),
        "version": Param("2.1", enum=["2.0", "2.1"], description="data set version"),
        "org_provider": Param("", type="string", description="OrgIDProv (ODS code of the provider); empty: the "
                                                             "ods_code of the Variable caldicott_service"),
        "provider_name": Param("", type="string", description="the provider's name, for the report's heading"),
        "org_submitter": Param("", type="string", description="OrgIDSubmit, if different"),
        "pre2020_objection": Param("referrals_before_cutover",
                                   enum=["referrals_before_cutover", "whole_patient", "ignore"],
                                   description="how pre-September-2020 objections are honoured"),
        "submitter": Param("named-submitter", type="string", description="opaque id of the named submitter"),
        "ndop_wait_minutes": Param(180, type="integer", minimum=1, description="how long to await the NDOP reply"),
        "submission_route": Param("configured", enum=["configured", "staged", "mesh", "sftp"],
                                  description="configured: the Variable caldicott_dataset_submission (else staged); "
                                              "staged: for the named submitter; mesh / sftp: to the intermediary"),
        "confirm_timeout_minutes": Param(DEFAULT_CONFIRM_TIMEOUT_MINUTES, type="number", minimum=0,
                                         description="staged route: how long to wait for the SDCS reference "
                                                     "(0: until the submission window closes)"),
    },
)
def monthly_dataset():
    @task(task_id=PLAN)
    def plan_submissions(**context) -> dict:
        from caldicott_airflow.dataset import plan

        return plan(context)

    @task
    def build_validate_write(kind: str, **context) -> dict:
        from caldicott.dataset.pipeline import EmptyMonth
        from caldicott.dataset.pipeline import build_validate_write as run
        from caldicott.dataset.submit import WindowMissed
        from caldicott_airflow.connections import records_engine, state_engine
        from caldicott_airflow.dataset import settings, window_of

        try:
            return run(records_engine(), state_engine(), _period(context, kind), settings(context["params"]), kind,
                       window=window_of(_plan(context)))
        except (WindowMissed, EmptyMonth) as exc:
            raise _fail_and_alert(context, exc, kind) from None

    @task
    def stage_submission(kind: str, **context) -> dict:
        from airflow.sdk.exceptions import AirflowFailException
        from caldicott.dataset.submit import RouteConflict, SubmissionConfigError, WindowMissed, submit
        from caldicott_airflow.connections import state_engine
        from caldicott_airflow.dataset import submission_sender, submission_target, window_of

        window = window_of(_plan(context))
        try:
            target = submission_target(context["params"])
            with submission_sender(target) as sender:
                result = submit(state_engine(), _period(context, kind), target, sender, kind, window=window)
        except WindowMissed as exc:
            raise _fail_and_alert(context, exc, kind) from None
        except (SubmissionConfigError, RouteConflict) as exc:  # needs a person, not a retry
            raise AirflowFailException(str(exc)) from None
        if result["failed"] or result["refused"] or result["not_planned"]:
            raise RuntimeError(f"submission did not complete: {result}")
        return {**result, "window_closes": window.closes.isoformat(), "window_closes_at": window.closes_at.isoformat()}

    @task(trigger_rule="none_failed")  # confirm_submission is skipped after an automatic route / a confirmed one
    def record_submission(kind: str, **context) -> dict:
        from caldicott.dataset.pipeline import confirm as record
        from caldicott.dataset.state_tables import ConfirmationConflict
        from caldicott.dataset.submit import record_automatic
        from caldicott_airflow.connections import state_engine

        staged = context["ti"].xcom_pull(task_ids=f"{kind}.stage_submission") or {}
        period = _period(context, kind)
        if staged.get("confirmed"):       # confirmed by an earlier run: report it, record nothing
            return {"run_key": period.key, "kind": kind, "state": "submitted",
                    "reference": staged.get("submission_reference"), "already_confirmed": True}
        try:
            if staged.get("automatic"):
                return record_automatic(state_engine(), period, staged, kind)
            answer = context["ti"].xcom_pull(task_ids=f"{kind}.confirm_submission") or {}
            ref = (answer.get("params_input") or {}).get("submission_reference", "")
            by = answer.get("responded_by_user", {}).get("name") if isinstance(answer.get("responded_by_user"),
                                                                               dict) else None
            return record(state_engine(), period, ref, by, kind)
        except ConfirmationConflict as exc:
            raise _fail_and_alert(context, exc, kind) from None

    @task(trigger_rule="all_done")   # the refresh may have failed (missed, empty): the primary's check still runs
    def ndop_request(**context) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException
        from caldicott.dataset import state_tables
        from caldicott.dataset.pipeline import mpi_numbers, ndop_request_id
        from caldicott_airflow.connections import state_engine
        from caldicott_airflow.dataset import settings
        from caldicott_airflow.ndop import ndop_checker

        if not _plan(context):
            raise AirflowSkipException("no plan: the run has no submissions")
        s = settings(context["params"])
        rows = {k: state_tables.get(state_engine(), _period(context, k).key, k) for k in KINDS}
        built = [k for k, row in rows.items() if row is not None and row["state"] != state_tables.MISSED]
        if "primary" not in built:
            raise AirflowSkipException("the primary submission was not built: no opt-out check to make")
        numbers = sorted({n for k in built for n in mpi_numbers(state_engine(), _period(context, k), s, k)})
        with ndop_checker(state_engine()) as (checker, label):
            status = checker.send(numbers, ndop_request_id(_period(context)))
        return {"checked": len(numbers), "submissions": built, **status.counts(), "via": label}

    @task.sensor(poke_interval=30, timeout=3 * 3600, mode="reschedule")
    def ndop_reply(**context):
        from airflow.sdk import PokeReturnValue
        from caldicott.dataset.pipeline import ndop_request_id
        from caldicott_airflow.connections import state_engine
        from caldicott_airflow.ndop import ndop_checker

        with ndop_checker(state_engine()) as (checker, _label):
            done = checker.collect(ndop_request_id(_period(context)))
        return PokeReturnValue(is_done=done, xcom_value={"replied": done})

    @task
    def commissioner_extract(**context) -> dict:
        from caldicott.dataset import state_tables
        from caldicott.dataset.pipeline import mpi_numbers, planning_extract, record_optouts, stage_extract
        from caldicott_airflow.connections import state_engine
        from caldicott_airflow.dataset import settings, staging_sender, window_of
        from caldicott_airflow.ndop import ndop_checker

        period, s, window = _period(context), settings(context["params"]), window_of(_plan(context))
        numbers = mpi_numbers(state_engine(), period, s)
        with ndop_checker(state_engine(), mesh=False) as (checker, label):
            status = checker.status(numbers)
        checked = set(numbers) if status.complete else set()
        extract, counts = planning_extract(state_engine(), period, s, status.opted_out, checked, label,
                                           window=window)
        staged = stage_extract(state_engine(), period, s, extract, staging_sender())
        refresh = _period(context, "refresh")
        row = state_tables.get(state_engine(), refresh.key, "refresh")
        if row is not None and row["state"] != state_tables.MISSED:     # the refresh report's opt-out figures
            r_numbers = mpi_numbers(state_engine(), refresh, s, "refresh")
            with ndop_checker(state_engine(), mesh=False) as (checker, label):
                r_status = checker.status(r_numbers)
            counts["refresh_ndop_patients_kept_in_submission"] = record_optouts(
                state_engine(), refresh, s, "refresh", r_status.opted_out, label, window=window)
        return {**counts, "staged": staged}

    planned = plan_submissions()
    builds = []
    for kind in KINDS:
        with TaskGroup(kind):
            built = build_validate_write(kind)
            # a human step: its wait is its own response_timeout, not a task time limit (execution_timeout=None:
            # Airflow's HITL operator would otherwise take the DAG's limit as its response timeout, with a warning)
            confirm = SubmissionConfirmOperator(task_id="confirm_submission", kind=kind,
                                                stage_task_id=f"{kind}.stage_submission", execution_timeout=None)
            planned >> built >> stage_submission(kind) >> confirm >> record_submission(kind)
        builds.append(built)
    builds >> ndop_request() >> ndop_reply() >> commissioner_extract()


monthly_dataset()
