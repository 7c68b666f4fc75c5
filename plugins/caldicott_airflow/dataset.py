"""Airflow-side configuration of the monthly data set: key, folders, calendar, staging sender, submission route.

Configuration (README / docs/monthly_dataset.md):

* data set key: connection ``caldicott_dataset_key`` (its password: base64 AES-256 key), else the environment
  variable ``CALDICOTT_DATASET_KEY``; nothing configured → the task fails (no unencrypted fallback);
* work folder: ``CALDICOTT_DATASET_DIR``, else ``$CALDICOTT_OUTPUT_DIR/monthly_dataset``;
* staging folder the named submitter reads: ``CALDICOTT_STAGING_DIR``, else ``$CALDICOTT_OUTPUT_DIR/staging``;
* submission calendar: the Airflow Variable ``caldicott_dataset_calendar`` (NHS England's TSV, as text), else the
  file named by ``CALDICOTT_DATASET_CALENDAR``, else the bundled default (:mod:`caldicott.dataset.calendar`); read
  at run time by :func:`plan` (the run's first task), which fixes the run's window and its two submissions;
* NDOP check: :mod:`caldicott_airflow.ndop` (cache key connection ``caldicott_ndop_cache_key``, the service's
  mailbox ``CALDICOTT_NDOP_MAILBOX``, MESH connection ``caldicott_mesh``);
* submission route: the Airflow Variable ``caldicott_dataset_submission`` (JSON; also settable as the environment
  variable ``AIRFLOW_VAR_CALDICOTT_DATASET_SUBMISSION`` or from a secrets backend), read at run time, never when
  the DAG file is parsed. No Variable: the staged route. The run parameter ``submission_route`` overrides the
  configured route (:func:`caldicott.dataset.submit.resolve_target`). MESH sends from Caldicott's mailbox
  (``mesh_conn_id``, default ``CALDICOTT_MESH_CONN_ID`` or ``caldicott_mesh``); SFTP uses ``sftp_conn_id`` with a
  pinned host key (:func:`caldicott_airflow.sftp.sftp_sender`).

:class:`SubmissionConfirmOperator` is the human step of the staged route, one per submission (primary, refresh):
skipped when the submission went by an automatic route or is already confirmed (it is reported with its reference,
never asked again), waiting until the window closes, and failing without retry (so on-call is alerted, naming the
period and kind) when nobody entered a reference in time.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from airflow.providers.standard.operators.hitl import HITLEntryOperator
from airflow.sdk import Param

KEY_CONN_ID = os.environ.get("CALDICOTT_DATASET_KEY_CONN_ID", "caldicott_dataset_key")
SUBMISSION_VARIABLE = os.environ.get("CALDICOTT_DATASET_SUBMISSION_VARIABLE", "caldicott_dataset_submission")
MESH_CONN_ID = os.environ.get("CALDICOTT_MESH_CONN_ID", "caldicott_mesh")
UPLOADED = "Uploaded"
#: 0: the human step waits until the submission window closes (the calendar's published close)
DEFAULT_CONFIRM_TIMEOUT_MINUTES = 0


def _output_dir() -> Path:
    return Path(os.environ.get("CALDICOTT_OUTPUT_DIR", "outputs"))


def dataset_key() -> bytes:
    from caldicott.dataset.writer import load_key

    value = None
    with contextlib.suppress(Exception):  # no such connection: fall back to the environment
        from airflow.sdk import BaseHook

        value = BaseHook.get_connection(KEY_CONN_ID).password or None
    return load_key(value)


def settings(params: dict):
    """The data set's settings for this run. The provider (OrgIDProv, the report's name) is the deployment's own
    sending service (Variable ``caldicott_service``) unless the run names another: no built-in default."""
    from caldicott.dataset.pipeline import Settings

    from caldicott_airflow.service import sending_service

    work = Path(os.environ.get("CALDICOTT_DATASET_DIR") or _output_dir() / "monthly_dataset")
    org_provider, provider_name = params.get("org_provider"), params.get("provider_name")
    if not org_provider or not provider_name:
        service = sending_service()   # fails the task, naming the Variable, when it is not configured
        org_provider, provider_name = org_provider or service.ods_code, provider_name or service.name
    return Settings(work_dir=work, key=dataset_key(), version=str(params.get("version") or "2.1"),
                    org_provider=org_provider,
                    org_submitter=params.get("org_submitter") or None,
                    pre2020=params.get("pre2020_objection") or "referrals_before_cutover",
                    submitter=params.get("submitter") or "named-submitter",
                    commissioner=params.get("commissioner") or "commissioner",
                    provider_name=provider_name)


# ---- the calendar and the run's plan -------------------------------------------------------------------------

def submission_calendar():
    """The calendar in force (Variable, else ``CALDICOTT_DATASET_CALENDAR``, else bundled), read at run time."""
    from airflow.sdk import Variable
    from caldicott.dataset.calendar import VARIABLE, load

    text = Variable.get(VARIABLE, default=None)
    return load(text if isinstance(text, str) else None)


def plan(context) -> dict:
    """Which window this run is for and which submissions it builds (XCom of the first task; no patient data).

    The run's month (Param ``month``, else the month before its logical date) is the primary of one window of the
    calendar, whose refresh is the month before. Fails (no retry) when the calendar does not hold the month, and
    when the run's logical date precedes the DAG's start and no month was named: such a run has nothing to do and
    must not succeed as if it had submitted something.
    """
    from airflow.sdk.exceptions import AirflowFailException
    from caldicott.dataset.calendar import CalendarError, Kind

    from caldicott_airflow.intervals import monthly_period

    named_month = (context.get("params") or {}).get("month")
    dag = context.get("dag")
    start = getattr(dag, "start_date", None)
    logical = context.get("logical_date")
    notes: list[str] = []
    if start is not None and logical is not None and logical < start:
        if not named_month:
            alert(context, "dataset_run_before_start", logical_date=logical.isoformat(), dag_start=start.isoformat())
            raise AirflowFailException(
                f"the run's logical date {logical:%Y-%m-%d} precedes the DAG's start {start:%Y-%m-%d}: no reporting "
                'month is due, nothing was built. To build a month deliberately, trigger with conf {"month": '
                '"YYYY-MM"}')
        notes.append(f"logical date {logical:%Y-%m-%d} precedes the DAG's start; built because the run names the month")
    period = monthly_period(context)[0].strftime("%Y-%m")
    try:
        cal = submission_calendar()
        window = cal.window(period, Kind.PRIMARY)
    except CalendarError as exc:
        raise AirflowFailException(str(exc)) from None
    return {"period": period, "window": window.as_dict(), "calendar": cal.source,
            "submissions": {k.value: window.period(k) for k in Kind}, "notes": notes}


def window_of(planned: dict):
    """The :class:`~caldicott.dataset.calendar.Window` of a plan (from XCom)."""
    import datetime as _dt

    from caldicott.dataset.calendar import Window

    w = planned["window"]
    return Window(_dt.date.fromisoformat(w["opens"]), _dt.date.fromisoformat(w["closes"]), w["refresh"], w["primary"])


def alert(context, kind: str, **fields) -> None:
    """A structured on-call alert (webhook / e-mail / log) for what a person must act on; opaque values only.

    The task's own failure alert scrubs its message (dates and numbers go); this one says which period and which
    submission, which are not patient data.
    """
    from caldicott_airflow.notifiers import dispatch

    ti = context.get("ti") or context.get("task_instance")
    dispatch({"kind": kind, "dag_id": getattr(ti, "dag_id", None), "run_id": getattr(ti, "run_id", None),
              "task_id": getattr(ti, "task_id", None), **fields})


def staging_sender():
    from caldicott.transport.staging import StagingSender

    return StagingSender(Path(os.environ.get("CALDICOTT_STAGING_DIR") or _output_dir() / "staging"))


# ---- the submission route ----------------------------------------------------------------------------------

def submission_config() -> dict | None:
    """The deployment's submission configuration (Variable ``caldicott_dataset_submission``), or None."""
    from airflow.sdk import Variable
    from caldicott.dataset.submit import SubmissionConfigError

    try:
        value = Variable.get(SUBMISSION_VARIABLE, default=None, deserialize_json=True)
    except ValueError as exc:  # JSONDecodeError: say which Variable, not what it holds
        raise SubmissionConfigError(f"Variable {SUBMISSION_VARIABLE} is not JSON") from exc
    if value is not None and not isinstance(value, dict):
        raise SubmissionConfigError(f"Variable {SUBMISSION_VARIABLE} must be a JSON object")
    return value


def submission_target(params: dict):
    """This run's :class:`~caldicott.dataset.submit.SubmissionTarget` (param ``submission_route`` over config)."""
    from caldicott.dataset.submit import resolve_target

    return resolve_target(params.get("submission_route"), submission_config(),
                          submitter=params.get("submitter") or "named-submitter")


@contextlib.contextmanager
def submission_sender(target) -> Iterator[Any]:
    """The sender for ``target``'s route, closed afterwards: staging folder, MESH (MeshHook) or SFTP (SFTPHook)."""
    from caldicott.dataset.submit import Route

    if target.route == Route.STAGED:
        yield staging_sender()
        return
    if target.route == Route.MESH:
        from caldicott.transport.mesh import MeshSender

        from caldicott_airflow.hooks.mesh import MeshHook

        hook = MeshHook(target.mesh_conn_id or MESH_CONN_ID)
        try:
            yield MeshSender(hook.get_conn(), target.mesh_workflow)
        finally:
            hook.close()
        return
    from caldicott_airflow.sftp import sftp_sender

    with sftp_sender(target.sftp_conn_id, peer=f"data set intermediary {target.recipient}") as sender:
        yield sender


def confirm_timeout_minutes(context) -> float:
    """``confirm_timeout_minutes`` from the run's params (its conf, validated and merged by Airflow); 0 (the
    default) means "until the window closes"."""
    value = (context.get("params") or {}).get("confirm_timeout_minutes")
    return float(value or DEFAULT_CONFIRM_TIMEOUT_MINUTES)


def confirm_wait(context, closes_at: dt.datetime | None, now: dt.datetime | None = None) -> dt.timedelta | None:
    """How long the human step waits: the explicit ``confirm_timeout_minutes``, else until the window closes
    (None: it has closed already)."""
    minutes = confirm_timeout_minutes(context)
    if minutes > 0:
        return dt.timedelta(minutes=minutes)
    if closes_at is None:
        raise ValueError("no submission window to wait for")
    left = closes_at - (now or dt.datetime.now(dt.UTC))
    return left if left > dt.timedelta(0) else None


def reference_form() -> dict[str, Param]:
    """The submitter's form: the SDCS portal's submission reference (an opaque portal id).

    No default and no minLength: task params are validated when the task starts, before anyone answers; the
    reference itself is checked when it is recorded (``record_submission``).
    """
    ref = Param(None, type=["null", "string"], maxLength=100, description="SDCS Cloud submission reference")
    ref.source = "task"
    return {"submission_reference": ref}


class SubmissionConfirmOperator(HITLEntryOperator):
    """The named submitter's step of the staged route, for one submission: upload in SDCS, then enter its reference.

    * submission sent by an automatic route (``stage_submission`` says ``automatic``): skipped, nobody is asked;
    * submission already confirmed (``stage_submission`` says ``confirmed``, with its reference): skipped and
      reported with that reference; a person is never asked twice for the same submission;
    * the wait: ``confirm_timeout_minutes`` (run conf / param) when set, else until the window closes, with **no
      default answer**;
    * when it passes unanswered the task fails without retrying (a retry would only ask again): on-call is alerted
      (``submission_window_missed``, naming the period and kind, when it was the window), nothing is recorded.
    """

    def __init__(self, *, stage_task_id: str = "stage_submission", kind: str = "primary", **kwargs) -> None:
        kwargs["params"] = reference_form()
        if kwargs.get("defaults"):
            raise ValueError("the submission confirmation must have no default answer")
        staged = "ti.xcom_pull(task_ids='" + stage_task_id + "')"
        month = "{{ " + staged + "['run_key'] }}"
        kwargs.setdefault("subject", f"Monthly data set {month} ({kind} submission) is ready to upload")
        kwargs.setdefault("body", (
            f"The encrypted {kind} submission for **{month}** is in the staging folder. Write its IDB tables with "
            "`python -m caldicott.dataset.writer idb FILE FOLDER`, import them into the IDB, upload through the "
            "SDCS Cloud portal, then enter the portal's submission reference here. The window closes "
            "{{ " + staged + "['window_closes'] }} (end of day)."))
        super().__init__(options=[UPLOADED], **kwargs)
        self.stage_task_id = stage_task_id
        self.kind = kind

    def execute(self, context):
        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

        staged = context["ti"].xcom_pull(task_ids=self.stage_task_id) or {}
        label = f"{staged.get('run_key')} {self.kind}"
        if staged.get("automatic"):
            raise AirflowSkipException(f"{label} went automatically by {staged.get('route')}; no upload to confirm")
        if staged.get("confirmed"):
            ref = staged.get("submission_reference")
            raise AirflowSkipException(f"{label} is already confirmed (reference {ref}); not asked again")
        closes = staged.get("window_closes_at")
        wait = confirm_wait(context, dt.datetime.fromisoformat(closes) if closes else None)
        if wait is None:
            alert(context, "submission_window_missed", period=staged.get("run_key"), submission=self.kind,
                  window_closes=staged.get("window_closes"))
            raise AirflowFailException(
                f"{label}: the submission window closed on {staged.get('window_closes')} before the upload was "
                "confirmed; the submission missed its window. If it was uploaded in time, re-run with "
                "confirm_timeout_minutes to record its reference")
        self.response_timeout = wait
        return super().execute(context)

    def execute_complete(self, context, event: dict[str, Any]) -> Any:
        if event.get("error_type") == "timeout":
            from airflow.sdk.exceptions import AirflowFailException

            staged = context["ti"].xcom_pull(task_ids=self.stage_task_id) or {}
            label = f"{staged.get('run_key', 'the month')} {self.kind}"
            if confirm_timeout_minutes(context) > 0:
                raise AirflowFailException(
                    f"no SDCS submission reference entered for {label} within "
                    f"{confirm_timeout_minutes(context):g} minutes: the submission is NOT confirmed as submitted")
            alert(context, "submission_window_missed", period=staged.get("run_key"), submission=self.kind,
                  window_closes=staged.get("window_closes"))
            raise AirflowFailException(
                f"no SDCS submission reference entered for {label} before its window closed on "
                f"{staged.get('window_closes')}: the submission missed its window")
        return super().execute_complete(context, event)
