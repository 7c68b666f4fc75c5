"""
### Monthly data set (IAPT / NHS Talking Therapies v2.x)

One run per reporting month (Europe/London), scheduled on the 1st for the month before; catch-up and
backfill build older months. Required by law (Data Provision Notice, s259(5) HSCA 2012).

1. **build_validate_write** — builds IDS000 ... IDS607 from `caldicott_records`, applies the configured
   pre-September-2020 objection rule, validates against the v2.0 rule catalogue (vectorised), quarantines
   every record that would reject the file or be rejected (with its rule code), writes the archive (Parquet
   per table + manifest + intermediate SQLite database), AES-256-GCM encrypted, and the report
   (`report.html`, `figures.csv`, `quarantine.csv`) and opt-out statement.
2. **ndop_request → ndop_reply → commissioner_extract** — the national data opt-out does not apply to the
   mandated submission (NDOP patients are kept) but does apply to the commissioner / planning extract:
   the MPI's NHS numbers go to NHS England over MESH (`SPINE_NTT_UPHOLDING`) through the release gateway
   (purpose `ndop_check`, ledgered; answers cached for a limited time, keyed with `caldicott_ndop_cache_key`),
   the reply is awaited by a rescheduling sensor, and the extract is staged without opted-out patients.
3. **stage_submission** — sends the encrypted archive through the release gateway (purpose `mandated_dataset`),
   exactly once, by the run's route (param `submission_route`, default `configured`: the Airflow Variable
   `caldicott_dataset_submission`, else `staged`): `staged` for the named submitter (protection
   `staged-encrypted`); `mesh` or `sftp` automatically to an intermediary (docs/monthly_dataset.md).
4. **confirm_submission** — staged route only (skipped otherwise) — *Required Actions*: the submitter uploads
   the file in the SDCS Cloud portal and enters the portal's submission reference; no default answer, and after
   `confirm_timeout_minutes` (25 days) it fails and alerts on-call. **record_submission** stores the reference
   (or, for an automatic route, the MESH message id / remote path) in `dataset_submission`.

A deadline alert fires if the run is not finished by day 20, 12:00 of the month after the period.

* **XCom / logs / HITL text:** counts, rule codes, the reporting month and file names only.
* **Safe to re-run:** the quarantine, ledger and submission register are keyed by month; a month already
  staged is not rebuilt, and the staged file is never staged twice.
"""

from __future__ import annotations

import datetime as dt

import pendulum
from airflow.sdk import Param, dag, task
from caldicott_airflow.dag_defaults import COMMON_TAGS, default_args
from caldicott_airflow.dataset import DEFAULT_CONFIRM_TIMEOUT_MINUTES, SubmissionConfirmOperator
from caldicott_airflow.deadlines import submission_window

DAG_ID = "monthly_dataset"


def _period(context):
    from caldicott.dataset.builder import Period
    from caldicott_airflow.intervals import monthly_period

    return Period(*monthly_period(context))


@dag(
    dag_id=DAG_ID,
    schedule="0 6 1 * *",
    start_date=pendulum.datetime(2026, 10, 1, tz="Europe/London"),
    catchup=True,
    max_active_runs=1,
    doc_md=__doc__,
    tags=[*COMMON_TAGS, "dataset", "mandated"],
    default_args=default_args(),
    deadline=submission_window(alert_day=20, alert_hour=12, scheduled_day=1, scheduled_at=dt.time(6),
                               name="monthly data set not submitted by day 20 12:00"),
    params={
        "version": Param("2.1", enum=["2.0", "2.1"], description="data set version"),
        "org_provider": Param("ZZZ01", type="string", description="OrgIDProv (ODS code of the provider)"),
        "org_submitter": Param("", type="string", description="OrgIDSubmit, if different"),
        "pre2020_objection": Param("referrals_before_cutover",
                                   enum=["referrals_before_cutover", "whole_patient", "ignore"],
                                   description="how pre-September-2020 objections are honoured"),
        "intermediate_db": Param(True, type="boolean", description="include the intermediate SQLite database"),
        "submitter": Param("named-submitter", type="string", description="opaque id of the named submitter"),
        "ndop_wait_minutes": Param(180, type="integer", minimum=1, description="how long to await the NDOP reply"),
        "submission_route": Param("configured", enum=["configured", "staged", "mesh", "sftp"],
                                  description="configured: the Variable caldicott_dataset_submission (else staged); "
                                              "staged: for the named submitter; mesh / sftp: to the intermediary"),
        "confirm_timeout_minutes": Param(DEFAULT_CONFIRM_TIMEOUT_MINUTES, type="number", minimum=0.1,
                                         description="staged route: how long to wait for the SDCS reference"),
    },
)
def monthly_dataset():
    @task
    def build_validate_write(**context) -> dict:
        from caldicott.dataset.pipeline import build_validate_write as run
        from caldicott_airflow.connections import records_engine, state_engine
        from caldicott_airflow.dataset import settings

        return run(records_engine(), state_engine(), _period(context), settings(context["params"]))

    @task
    def ndop_request(**context) -> dict:
        from caldicott.dataset.pipeline import mpi_numbers, ndop_request_id
        from caldicott_airflow.connections import state_engine
        from caldicott_airflow.dataset import settings
        from caldicott_airflow.ndop import ndop_checker

        period, s = _period(context), settings(context["params"])
        numbers = mpi_numbers(state_engine(), period, s)
        with ndop_checker(state_engine()) as (checker, label):
            status = checker.send(numbers, ndop_request_id(period))
        return {"checked": len(numbers), **status.counts(), "via": label}

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
        from caldicott.dataset.pipeline import mpi_numbers, planning_extract, stage_extract
        from caldicott_airflow.connections import state_engine
        from caldicott_airflow.dataset import settings, staging_sender
        from caldicott_airflow.ndop import ndop_checker

        period, s = _period(context), settings(context["params"])
        numbers = mpi_numbers(state_engine(), period, s)
        with ndop_checker(state_engine(), mesh=False) as (checker, label):
            status = checker.status(numbers)
        checked = set(numbers) if status.complete else set()
        blob, counts = planning_extract(state_engine(), period, s, status.opted_out, checked, label)
        staged = stage_extract(state_engine(), period, s, blob, staging_sender())
        return {**counts, "staged": staged}

    @task
    def stage_submission(**context) -> dict:
        from airflow.sdk.exceptions import AirflowFailException
        from caldicott.dataset.submit import RouteConflict, SubmissionConfigError, submit
        from caldicott_airflow.connections import state_engine
        from caldicott_airflow.dataset import submission_sender, submission_target

        try:
            target = submission_target(context["params"])
            with submission_sender(target) as sender:
                result = submit(state_engine(), _period(context), target, sender)
        except (SubmissionConfigError, RouteConflict) as exc:  # needs a person, not a retry
            raise AirflowFailException(str(exc)) from None
        if result["failed"] or result["refused"] or result["not_planned"]:
            raise RuntimeError(f"submission did not complete: {result}")
        return result

    confirm = SubmissionConfirmOperator(task_id="confirm_submission", stage_task_id="stage_submission")

    @task(trigger_rule="none_failed")  # confirm_submission is skipped when the month went automatically
    def record_submission(**context) -> dict:
        from caldicott.dataset.pipeline import confirm as record
        from caldicott.dataset.submit import record_automatic
        from caldicott_airflow.connections import state_engine

        staged = context["ti"].xcom_pull(task_ids="stage_submission") or {}
        if staged.get("automatic"):
            return record_automatic(state_engine(), _period(context), staged)
        answer = context["ti"].xcom_pull(task_ids="confirm_submission") or {}
        ref = (answer.get("params_input") or {}).get("submission_reference", "")
        return record(state_engine(), _period(context), ref, answer.get("responded_by_user", {}).get("name")
                      if isinstance(answer.get("responded_by_user"), dict) else None)

    built = build_validate_write()
    built >> ndop_request() >> ndop_reply() >> commissioner_extract()
    built >> stage_submission() >> confirm >> record_submission()


monthly_dataset()
