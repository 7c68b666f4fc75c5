"""Airflow adapters of the disclosure flow: who may approve, the approval step, escalation on timeout.

* :func:`approvers` — the service-manager approvers, from ``CALDICOTT_APPROVERS`` (comma-separated Airflow
  user ids; default ``manager1,manager2``). Read when the DAG file is parsed: no Variable, no database. An
  empty list is refused (Airflow would let anyone answer an unassigned task); ``record_decision`` checks the
  responder against the same list again.
* :class:`DisclosureApprovalOperator` — Airflow's HITL operator with two options, Approve and Refuse, and
  **no default**: it never approves (or refuses) on anyone's behalf. Subject and body are built at run time
  from the package summary (ids, categories and counts only). The wait is ``approval_timeout_minutes`` from
  the run's params. When it passes, the scheduler resumes the task with a timeout; this operator then
  escalates (:class:`EscalationNotifier`) and returns ``timed_out``, which the next task records as an
  escalation and a refusal. An answer whose form does not validate is passed on as an incomplete answer
  (the next task records it and fails: nothing is released).
* :class:`ApproverNotifier` — when a request starts waiting, tells the approvers (``CALDICOTT_APPROVER_WEBHOOK``)
  with the link to its Required Action page.
* :class:`EscalationNotifier` — tells the Caldicott Guardian / on-call: ``CALDICOTT_GUARDIAN_WEBHOOK``
  (JSON POST; falls back to ``CALDICOTT_ONCALL_WEBHOOK``) and always the task log. Ids only.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import urllib.request
from typing import Any

from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk import BaseNotifier, Param

log = logging.getLogger(__name__)

APPROVE, REFUSE = "Approve", "Refuse"
DEFAULT_TIMEOUT_MINUTES = 3 * 24 * 60


def approvers() -> list[dict[str, str]]:
    """The users who may answer a held disclosure (HITL ``assigned_users``)."""
    names = [n.strip() for n in os.environ.get("CALDICOTT_APPROVERS", "manager1,manager2").split(",") if n.strip()]
    return [{"id": n, "name": n} for n in names]


def decision_form() -> dict[str, Param]:
    """The approver's form. Fields say what the register must hold; none may carry patient identifiers.

    ``source="task"``: the HITL operator shows only task-level params in its form (not the DAG's request form).
    """
    form = {
        "reasons": Param("", type="string", title="Reasons for your decision",
                         description="Why disclosure is (or is not) necessary and proportionate. Required to "
                                     "approve. Do not type patient identifiers."),
        "legal_basis_confirmed": Param(False, type="boolean", title="Legal basis confirmed",
                                       description="You have seen the order / authority and the legal basis "
                                                   "shown above applies. Required to approve."),
        "tell_patient": Param(True, type="boolean", title="Tell the patient",
                              description="Send the patient a letter saying what was shared, with whom and why."),
        "not_told_reason": Param(
            "n/a", type="string", title="If the patient is not told, why",
            enum=["n/a", "risk_of_serious_harm", "tipping_off", "court_direction", "patient_already_knows",
                  "research_privacy_notice"],
            values_display={"n/a": "Not applicable: the patient will be told",
                            "risk_of_serious_harm": "Risk of serious harm to the patient or others",
                            "tipping_off": "Would prejudice a criminal investigation (tipping off)",
                            "court_direction": "A court or statute directs that they are not told",
                            "patient_already_knows": "The patient asked for this disclosure",
                            "research_privacy_notice": "De-identified research: privacy notice"}),
        "consulted": Param("", type="string", title="Who was consulted",
                           description="e.g. Caldicott Guardian, Data Protection Officer, legal adviser, clinician"),
    }
    for p in form.values():
        p.source = "task"
    return form


def _post(url: str, msg: dict) -> None:
    req = urllib.request.Request(url, data=json.dumps(msg, default=str).encode(),  # noqa: S310 - configured URL
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
            resp.read()
    except OSError as exc:  # an alert failing must not stop the refusal being recorded
        log.error("escalation webhook failed: %s", type(exc).__name__)


class EscalationNotifier(BaseNotifier):
    """A held disclosure got no decision in time: tell the Caldicott Guardian and on-call (ids only)."""

    template_fields = ()

    def __init__(self, webhook_url: str | None = None) -> None:
        super().__init__()
        self.webhook_url = webhook_url

    def message(self, context) -> dict[str, Any]:
        ti = context.get("task_instance") or context.get("ti")
        summary = ti.xcom_pull(task_ids="build_package") if ti is not None else None
        return {"kind": "disclosure_escalation", "dag_id": getattr(ti, "dag_id", None),
                "run_id": getattr(ti, "run_id", None), "task_id": getattr(ti, "task_id", None),
                "disclosure_id": (summary or {}).get("disclosure_id"),
                "request_type": (summary or {}).get("request_type"),
                "what": "no decision within the time allowed: escalated, and the request is refused"}

    def notify(self, context) -> list[str]:
        msg = self.message(context)
        log.warning("caldicott escalation: %s", json.dumps(msg, default=str))
        sent = ["task_log"]
        url = (self.webhook_url or os.environ.get("CALDICOTT_GUARDIAN_WEBHOOK")
               or os.environ.get("CALDICOTT_ONCALL_WEBHOOK"))
        if url:
            _post(url, msg)
            sent.append("webhook")
        return sent


class ApproverNotifier(BaseNotifier):
    """A disclosure is waiting: tell the approvers (``CALDICOTT_APPROVER_WEBHOOK``, JSON POST) with the link to
    its Required Action page. Ids only; always in the task log."""

    template_fields = ()

    def notify(self, context) -> None:
        ti = context.get("task_instance") or context.get("ti")
        summary = (ti.xcom_pull(task_ids="build_package") if ti is not None else None) or {}
        link = None
        try:
            link = HITLOperator.generate_link_to_ui_from_context(context=context)
        except (ValueError, KeyError, AttributeError) as exc:
            log.info("no link to the Required Action page (%s)", type(exc).__name__)
        msg = {"kind": "disclosure_awaiting_decision", "disclosure_id": summary.get("disclosure_id"),
               "request_type": summary.get("request_type"), "urgency": summary.get("urgency"),
               "approvers": [u["id"] for u in approvers()], "link": link}
        log.info("caldicott disclosure awaiting a decision: %s", json.dumps(msg, default=str))
        url = os.environ.get("CALDICOTT_APPROVER_WEBHOOK")
        if url:
            _post(url, msg)


class DisclosureApprovalOperator(HITLOperator):
    """Hold a disclosure for a service manager's decision (see the module docstring)."""

    def __init__(self, *, summary_task_id: str = "build_package", escalation: EscalationNotifier | None = None,
                 **kwargs) -> None:
        kwargs.setdefault("subject", "Disclosure request awaiting a decision")
        kwargs.setdefault("assigned_users", approvers())
        kwargs.setdefault("notifiers", [ApproverNotifier()])
        # Airflow's operator metaclass passes the DAG's params in ``params``; the form is ours, always.
        kwargs["params"] = decision_form()
        if kwargs.get("defaults"):
            raise ValueError("a disclosure approval must have no default answer")
        if not kwargs["assigned_users"]:  # Airflow lets ANY user answer a HITL task that has no assigned users
            raise ValueError("a disclosure approval needs at least one assigned approver (CALDICOTT_APPROVERS)")
        super().__init__(options=[APPROVE, REFUSE], multiple=False, **kwargs)
        self.summary_task_id = summary_task_id
        self.escalation = escalation or EscalationNotifier()

    def _timeout_minutes(self, context) -> float:
        run = context.get("dag_run")
        conf = (getattr(run, "conf", None) or {}) if run is not None else {}
        params = context.get("params") or {}
        value = conf.get("approval_timeout_minutes") or params.get("approval_timeout_minutes")
        return float(value or DEFAULT_TIMEOUT_MINUTES)

    def execute(self, context):
        from caldicott.disclosure.flow import approval_text

        summary = context["ti"].xcom_pull(task_ids=self.summary_task_id)
        minutes = self._timeout_minutes(context)
        self.subject, self.body = approval_text(summary, minutes)
        self.response_timeout = dt.timedelta(minutes=minutes)
        return super().execute(context)

    def execute_complete(self, context, event: dict[str, Any]) -> Any:
        if event.get("error_type") == "timeout":
            notified = self.escalation.notify(context)
            return {"timed_out": True, "timeout_minutes": self._timeout_minutes(context), "notified": notified}
        try:
            return super().execute_complete(context, event)
        except ValueError as exc:  # includes ParamValidationError: the form's answer did not validate
            log.error("approval answer did not validate (%s); recorded as incomplete", type(exc).__name__)
            return {"chosen_options": event.get("chosen_options"), "params_input": {},
                    "responded_by_user": event.get("responded_by_user"), "responded_at": event.get("responded_at"),
                    "form_invalid": True}
