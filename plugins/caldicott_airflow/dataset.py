"""Airflow-side configuration of the monthly data set: key, folders, staging sender, submission route.

Configuration (README / docs/monthly_dataset.md):

* data set key: connection ``caldicott_dataset_key`` (its password: base64 AES-256 key), else the environment
  variable ``CALDICOTT_DATASET_KEY``; nothing configured → the task fails (no unencrypted fallback);
* work folder: ``CALDICOTT_DATASET_DIR``, else ``$CALDICOTT_OUTPUT_DIR/monthly_dataset``;
* staging folder the named submitter reads: ``CALDICOTT_STAGING_DIR``, else ``$CALDICOTT_OUTPUT_DIR/staging``;
* NDOP check: :mod:`caldicott_airflow.ndop` (cache key connection ``caldicott_ndop_cache_key``, the service's
  mailbox ``CALDICOTT_NDOP_MAILBOX``, MESH connection ``caldicott_mesh``);
* submission route: the Airflow Variable ``caldicott_dataset_submission`` (JSON; also settable as the environment
  variable ``AIRFLOW_VAR_CALDICOTT_DATASET_SUBMISSION`` or from a secrets backend), read at run time, never when
  the DAG file is parsed. No Variable: the staged route. The run parameter ``submission_route`` overrides the
  configured route (:func:`caldicott.dataset.submit.resolve_target`). MESH sends from Caldicott's mailbox
  (``mesh_conn_id``, default ``CALDICOTT_MESH_CONN_ID`` or ``caldicott_mesh``); SFTP uses ``sftp_conn_id`` with a
  pinned host key (:func:`caldicott_airflow.sftp.sftp_sender`).

:class:`SubmissionConfirmOperator` is the human step of the staged route: skipped when the month went by an
automatic route, and failing without retry (so on-call is alerted) when nobody entered a reference in time.
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
DEFAULT_CONFIRM_TIMEOUT_MINUTES = 25 * 24 * 60  # the SDCS window closes about the 22nd-29th


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
    from caldicott.dataset.pipeline import Settings

    work = Path(os.environ.get("CALDICOTT_DATASET_DIR") or _output_dir() / "monthly_dataset")
    return Settings(work_dir=work, key=dataset_key(), version=str(params.get("version") or "2.1"),
                    org_provider=params.get("org_provider") or "ZZZ01",
                    org_submitter=params.get("org_submitter") or None,
                    pre2020=params.get("pre2020_objection") or "referrals_before_cutover",
                    intermediate_db=bool(params.get("intermediate_db", True)),
                    submitter=params.get("submitter") or "named-submitter",
                    commissioner=params.get("commissioner") or "commissioner")


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
    """``confirm_timeout_minutes`` from the run's conf or params (default 25 days)."""
    run = context.get("dag_run")
    conf = (getattr(run, "conf", None) or {}) if run is not None else {}
    params = context.get("params") or {}
    value = conf.get("confirm_timeout_minutes") or params.get("confirm_timeout_minutes")
    return float(value or DEFAULT_CONFIRM_TIMEOUT_MINUTES)


def reference_form() -> dict[str, Param]:
    """The submitter's form: the SDCS portal's submission reference (an opaque portal id).

    No default and no minLength: task params are validated when the task starts, before anyone answers; the
    reference itself is checked when it is recorded (``record_submission``).
    """
    ref = Param(None, type=["null", "string"], maxLength=100, description="SDCS Cloud submission reference")
    ref.source = "task"
    return {"submission_reference": ref}


class SubmissionConfirmOperator(HITLEntryOperator):
    """The named submitter's step of the staged route: upload in the SDCS portal, then enter its reference.

    * month sent by an automatic route (``stage_submission`` says ``automatic``): skipped, nobody is asked;
    * the wait is ``confirm_timeout_minutes`` (run conf / param; 25 days by default), with **no default answer**;
    * when it passes unanswered the task fails without retrying (a retry would only ask again, past the window):
      the on-call notifier alerts, nothing is recorded, and clearing the task asks again.
    """

    def __init__(self, *, stage_task_id: str = "stage_submission", **kwargs) -> None:
        kwargs["params"] = reference_form()
        if kwargs.get("defaults"):
            raise ValueError("the submission confirmation must have no default answer")
        month = "{{ ti.xcom_pull(task_ids='" + stage_task_id + "')['run_key'] }}"
        kwargs.setdefault("subject", f"Monthly data set {month} is ready to upload")
        kwargs.setdefault("body", (
            f"The encrypted data set for **{month}** is in the staging folder. Decrypt it with "
            "`python -m caldicott.dataset.writer decrypt`, upload it through the SDCS Cloud portal, then enter "
            "the portal's submission reference here."))
        super().__init__(options=[UPLOADED], **kwargs)
        self.stage_task_id = stage_task_id

    def execute(self, context):
        from airflow.sdk.exceptions import AirflowSkipException

        staged = context["ti"].xcom_pull(task_ids=self.stage_task_id) or {}
        if staged.get("automatic"):
            raise AirflowSkipException(f"{staged.get('run_key')} went automatically by {staged.get('route')}; "
                                       "no upload to confirm")
        self.response_timeout = dt.timedelta(minutes=confirm_timeout_minutes(context))
        return super().execute(context)

    def execute_complete(self, context, event: dict[str, Any]) -> Any:
        if event.get("error_type") == "timeout":
            from airflow.sdk.exceptions import AirflowFailException

            staged = context["ti"].xcom_pull(task_ids=self.stage_task_id) or {}
            raise AirflowFailException(
                f"no SDCS submission reference entered for {staged.get('run_key', 'the month')} within "
                f"{confirm_timeout_minutes(context):g} minutes: the month is NOT confirmed as submitted")
        return super().execute_complete(context, event)
