"""Airflow adapters of the disclosure flow: who may approve, the approval step, escalation on timeout.

* :func:`approvers` — the service-manager approvers, from ``CALDICOTT_APPROVERS`` (comma-separated Airflow
  user names: the directory user names under the FAB auth manager). Read when the DAG file is parsed: no
  Variable, no database. There is no default, and an empty list is refused (Airflow would let anyone answer
  an unassigned task): without it the DAG does not load (fail closed).
* :class:`DisclosureApprovalOperator` — Airflow's HITL operator with two options, Approve and Refuse, and
  **no default**: it never approves (or refuses) on anyone's behalf. The page is built at run time from the
  disclosure register (never XCom; :mod:`caldicott.disclosure.approval`), every value escaped, the route in
  full. The person who filed the request is not assigned (separation of duties). When answered, the operator
  takes the answer from **Airflow's own record of it** — the resume event Airflow writes from this task
  instance's HITL row (:func:`hitl_answer`) — and records the decision in the register itself: the register's
  decision is the only one a release honours, so marking this task successful with a forged XCom result
  decides nothing (issue 14). The wait is ``approval_timeout_minutes`` from the run's params; when it passes
  with no answer, the operator escalates (:class:`EscalationNotifier`) and records a refusal.
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
    """The users who may answer a held disclosure (HITL ``assigned_users``). No default: fail closed."""
    names = [n.strip() for n in os.environ.get("CALDICOTT_APPROVERS", "").split(",") if n.strip()]
    return [{"id": n, "name": n} for n in names]


def hitl_answer(event: dict[str, Any]) -> dict[str, Any]:
    """Airflow's own record of the answer to this HITL task instance, as the task resumes with it.

    On Airflow 3.3 the api-server, in the transaction that stores an assigned user's answer in the task's
    ``hitl_detail`` row, writes the resume event from that row (``HITLDetail.as_resume_event_payload``) into
    the task instance's ``next_kwargs``; the scheduler does the same when the wait times out. No REST
    endpoint writes ``next_kwargs``: unlike XCom, no Airflow user can forge it. (A worker's supervisor does
    not relay the Task SDK's HITL read, ``GetHITLDetailResponse``; only the triggerer's does.)
    """
    if event.get("error_type") == "timeout":
        return {"timed_out": True}
    user = event.get("responded_by_user") or None
    at = event.get("responded_at")
    return {"response_received": bool(event.get("chosen_options")) and user is not None,
            "chosen_options": list(event.get("chosen_options") or []),
            "params_input": dict(event.get("params_input") or {}),
            "responded_by_user": {"id": str(user.get("id") or ""), "name": str(user.get("name") or "")}
            if user else None,
            "responded_at": at.isoformat() if hasattr(at, "isoformat") else at}


def decision_form() -> dict[str, Param]:
    """The approver's form. Fields say what the register must hold; none may carry patient identifiers.

    ``source="task"``: the HITL operator shows only task-level params in its form (not the DAG's request form).
    """
    form = {
        "reasons": Param("", type="string", title="Reasons for your decision",
                         description="Why disclosure is (or is not) necessary and proportionate. To refuse, "
                                     "this is all you need to fill in. Do not type patient identifiers."),
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
        "consulted": Param(None, type=["null", "string"], title="Who was consulted",
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


def _request_ids(context) -> dict[str, Any]:
    """Disclosure id, type and urgency of the run's request (from its params; ids only, never XCom)."""
    from caldicott.disclosure.request import DisclosureRequest, RequestInvalid

    try:
        req = DisclosureRequest.from_conf(dict(context.get("params") or {}))
    except RequestInvalid:
        return {}
    return {"disclosure_id": req.disclosure_id, "request_type": req.request_type, "urgency": req.urgency}


class EscalationNotifier(BaseNotifier):
    """A held disclosure got no decision in time: tell the Caldicott Guardian and on-call (ids only)."""

    template_fields = ()

    def __init__(self, webhook_url: str | None = None) -> None:
        super().__init__()
        self.webhook_url = webhook_url

    def message(self, context) -> dict[str, Any]:
        ti = context.get("task_instance") or context.get("ti")
        ids = _request_ids(context)
        return {"kind": "disclosure_escalation", "dag_id": getattr(ti, "dag_id", None),
                "run_id": getattr(ti, "run_id", None), "task_id": getattr(ti, "task_id", None),
                "disclosure_id": ids.get("disclosure_id"), "request_type": ids.get("request_type"),
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
        summary = _request_ids(context)
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

    def __init__(self, *, escalation: EscalationNotifier | None = None, **kwargs) -> None:
        kwargs.setdefault("subject", "Disclosure request awaiting a decision")
        kwargs.setdefault("assigned_users", approvers())
        kwargs.setdefault("notifiers", [ApproverNotifier()])
        # A human decision: its wait is response_timeout (set in execute), not the DAG-wide task time limit, which
        # HITLOperator would otherwise clear with a deprecation warning on every parse.
        kwargs.setdefault("execution_timeout", None)
        # Airflow's operator metaclass passes the DAG's params in ``params``; the form is ours, always.
        kwargs["params"] = decision_form()
        if kwargs.get("defaults"):
            raise ValueError("a disclosure approval must have no default answer")
        if not kwargs["assigned_users"]:  # Airflow lets ANY user answer a HITL task that has no assigned users
            raise ValueError("a disclosure approval needs at least one assigned approver (CALDICOTT_APPROVERS)")
        super().__init__(options=[APPROVE, REFUSE], multiple=False, **kwargs)
        self.escalation = escalation or EscalationNotifier()

    def _timeout_minutes(self, context) -> float:
        run = context.get("dag_run")
        conf = (getattr(run, "conf", None) or {}) if run is not None else {}
        params = context.get("params") or {}
        value = conf.get("approval_timeout_minutes") or params.get("approval_timeout_minutes")
        return float(value or DEFAULT_TIMEOUT_MINUTES)

    @staticmethod
    def _request(context):
        from caldicott.disclosure.request import DisclosureRequest

        return DisclosureRequest.from_conf(dict(context["params"]))

    def execute(self, context):
        from airflow.sdk.exceptions import AirflowFailException
        from caldicott.disclosure.flow import DecisionIncomplete, approval_text

        from caldicott_airflow.connections import state_engine
        from caldicott_airflow.disclosure_sources import ConfigMissing, endpoint

        req = self._request(context)
        requester = getattr(context.get("dag_run"), "triggering_user_name", None) or ""
        # Separation of duties: whoever filed the request is not asked (Airflow then refuses their answer, 403).
        self.assigned_users = [u for u in (self.assigned_users or []) if u["name"] != requester]
        if not self.assigned_users:
            raise AirflowFailException("no approver other than the person who filed the request is configured "
                                       "(CALDICOTT_APPROVERS): the request cannot be decided")
        minutes = self._timeout_minutes(context)
        try:
            where = endpoint(req.channel, req.connection_id)
            self.subject, self.body = approval_text(state_engine(), req.disclosure_id, minutes,
                                                    approvers=[u["name"] for u in self.assigned_users],
                                                    endpoint=where)
        except (ConfigMissing, DecisionIncomplete) as exc:
            raise AirflowFailException(str(exc)) from None
        self.response_timeout = dt.timedelta(minutes=minutes)
        return super().execute(context)

    def execute_complete(self, context, event: dict[str, Any]) -> Any:
        """Record the decision from Airflow's record of the answer (:func:`hitl_answer`), never from XCom."""
        from airflow.sdk.exceptions import AirflowFailException
        from caldicott.disclosure.flow import DecisionIncomplete, page_facts, record_decision

        from caldicott_airflow.connections import state_engine
        from caldicott_airflow.disclosure_sources import ConfigMissing, endpoint

        req = self._request(context)
        state = state_engine()
        answer = hitl_answer(event)
        if answer.get("timed_out"):
            answer.update(timeout_minutes=self._timeout_minutes(context), notified=self.escalation.notify(context))
        elif answer["response_received"]:
            try:
                self.validate_chosen_options(answer["chosen_options"])
                self.validate_params_input(answer["params_input"])
            except ValueError as exc:  # includes ParamValidationError; its text may quote the form: not logged
                log.error("approval answer did not validate (%s); recorded as incomplete", type(exc).__name__)
                answer["params_input"] = {}
        try:
            _, summary = page_facts(state, req.disclosure_id)
            where = endpoint(req.channel, req.connection_id)
            return record_decision(state, summary, answer, approvers=[u["name"] for u in approvers()],
                                   endpoint=where)
        except (ConfigMissing, DecisionIncomplete) as exc:  # recorded in the register; nothing is released
            raise AirflowFailException(str(exc)) from None
