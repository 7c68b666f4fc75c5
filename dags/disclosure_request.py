"""
### Disclosure request (non-routine): held for a service manager's decision

One run handles one request from a court, the police, a safeguarding partner, the DWP, a regulator, a
solicitor, the patient's nominee or a research partner. Trigger it with the form (**Trigger** ▸ fill in the
request) or over the REST API with the same fields as `conf` (docs/disclosures.md).

1. **record_request** — the request goes into the append-only disclosure register (who asked, how their
   authority was checked, type, reference, purpose, necessity, legal basis, patient by local id, categories,
   date range, urgency, consent).
2. **build_package** — only the categories asked for *and* allowed for this request type, for the date range
   (`caldicott.policy.disclosure`); research extracts are de-identified and filtered through the national data
   opt-out. Encrypted to the requester's certificate and kept in the state database.
3. **approve_disclosure** — waits under **Required Actions** for one of the assigned service managers
   (`CALDICOTT_APPROVERS`, less the person who filed the request). The page is built from the register,
   every value escaped, with the route in full (server, folder or mailbox, certificate). Never approves by
   default; after `approval_timeout_minutes` it escalates to the Caldicott Guardian and the request is refused.
   When answered, it reads the answer from **Airflow's own HITL record** of this task (never XCom) and the
   register keeps who decided, when, why, legal basis confirmed, whether the patient is told (or why not) and
   who was consulted. An approval missing any of that, an answer from anyone not in `CALDICOTT_APPROVERS`, or
   from the requester, fails here; nothing leaves.
4. **record_decision** — branches on the register's decision; with none there (e.g. the approval step was
   marked successful by hand) it records that and fails.
5. Approved: **release_package** through the release gateway (it re-checks the approval against the recipient
   and package checksum; the route, certificate and server must be those approved) by the request's `channel`
   (`outbox`, `sftp`, or `smime-email` to the requester's secure mailbox), and **notify_patient**.
   Refused: **write_refusal_letter**.

* **Reads:** `caldicott_records`. **Writes:** `caldicott_state`, files under `CALDICOTT_OUTPUT_DIR`.
* **XCom / HITL text:** disclosure id, categories, counts, checksums. Never patient identifiers.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag, task
from caldicott_airflow.dag_defaults import COMMON_TAGS, default_args
from caldicott_airflow.disclosure import DEFAULT_TIMEOUT_MINUTES, DisclosureApprovalOperator

REQUEST_TYPES = ["court_order", "police", "safeguarding", "dwp", "regulator", "solicitor", "patient_requested",
                 "research"]
LEGAL_BASES = ["court_order", "crime_prevention", "safeguarding", "statutory_duty", "consent", "vital_interests",
               "research_s251", "research_deidentified"]
CATEGORIES = ["demographics", "gp_details", "referrals", "appointments", "outcome_scores", "care_plans",
              "clinical_notes"]


def _s(title: str, description: str, **kw) -> Param:
    return Param(type="string", title=title, description=description, **kw)


PARAMS = {
    "request_type": _s("Request type", "Which kind of request this is", enum=REQUEST_TYPES),
    "reference": _s("Requester's reference", "Their reference (court case number, crime reference ...)",
                    minLength=1),
    "requester_organisation": _s("Requesting organisation", "e.g. Thames Valley Police", minLength=1),
    "requester_org_code": Param("", type="string", title="Organisation code",
                                description="ODS or other code of the requester, if it has one"),
    "requester_person": _s("Person asking", "Name and role of the person making the request", minLength=1),
    "authority_check": _s("How their authority was checked",
                          "e.g. sealed order seen; called back through the force switchboard", minLength=1),
    "purpose": _s("Purpose", "What the information is for", minLength=1),
    "necessity": _s("Why disclosure is necessary", "Why they cannot do without it", minLength=1),
    "legal_basis": _s("Legal basis claimed", "The basis the requester relies on", enum=LEGAL_BASES),
    "local_patient_id": Param("", type="string", title="Patient (local id)",
                              description="LocalPatientId of the patient; leave empty for a research cohort"),
    "categories": Param(type="array", title="Data asked for", items={"type": "string", "enum": CATEGORIES},
                        description="Only those allowed for the request type are included", minItems=1),
    "date_from": Param(type="string", format="date", title="From (inclusive)"),
    "date_to": Param(type="string", format="date", title="To (inclusive)"),
    "urgency": Param("routine", type="string", enum=["routine", "urgent", "immediate_risk"], title="Urgency"),
    "consent_status": Param("not_sought", type="string", title="Patient consent",
                            enum=["given", "refused", "not_sought", "not_possible", "not_required"]),
    "channel": Param("outbox", type="string", enum=["outbox", "sftp", "smime-email"], title="Delivery",
                     values_display={"outbox": "Outbox: encrypted file, sent by a named person",
                                     "sftp": "SFTP to the requester's server",
                                     "smime-email": "S/MIME e-mail to the requester's secure mailbox"},
                     description="outbox: encrypted file for a named person to send by the agreed route; "
                                 "sftp: to the requester's server; smime-email: S/MIME-encrypted e-mail to "
                                 "their secure mailbox"),
    "recipient_address": Param("", type="string", title="Recipient address",
                               description="channel sftp: directory on the requester's server; channel "
                                           "smime-email: the requester's secure e-mail address"),
    "connection_id": Param("", type="string", title="Airflow connection used to deliver",
                           description="channel sftp: SSH connection with a pinned host_key (default "
                                       "caldicott_sftp_disclosure); channel smime-email: SMTP relay (default "
                                       "caldicott_smtp). Only connections the deployment lists in "
                                       "CALDICOTT_DISCLOSURE_CONNECTIONS"),
    # no default: where the data will be processed is a fact the requester states, never assumed
    "country": _s("Requester's country", "ISO 3166-1 alpha-2 code of the country where the requester will process "
                  "the data (e.g. GB, IE). Shown to the approver; the release gateway refuses a country not on the "
                  "deployment's adequacy list", pattern="^[A-Za-z]{2}$"),
    "recipient_certificate_pem": Param(type="string", format="multiline", title="Recipient's certificate (PEM)",
                                       description="The package is encrypted to it; nothing leaves unencrypted"),
    "approval_timeout_minutes": Param(DEFAULT_TIMEOUT_MINUTES, type="number", minimum=0.1,
                                      title="Decision needed within (minutes)",
                                      description="Then it escalates to the Caldicott Guardian and is refused"),
}


@dag(
    dag_id="disclosure_request",
    schedule=None,
    start_date=pendulum.datetime(2026, 10, 1, tz="Europe/London"),
    catchup=False,
    doc_md=__doc__,
    tags=[*COMMON_TAGS, "disclosure", "hitl"],
    default_args=default_args(),
    params=PARAMS,
)
def disclosure_request():
    @task
    def record_request(**context) -> dict:
        """Validate the request and append it to the register (once)."""
        from airflow.sdk.exceptions import AirflowFailException
        from caldicott.disclosure.flow import AlreadyDecided
        from caldicott.disclosure.flow import record_request as record
        from caldicott.disclosure.request import DisclosureRequest, RequestInvalid
        from caldicott_airflow.connections import state_engine
        from caldicott_airflow.disclosure_sources import ConfigMissing, connection_for

        try:
            req = DisclosureRequest.from_conf(dict(context["params"]))
            connection_for(req.channel, req.connection_id)   # only connections the deployment allows
            actor = getattr(context["dag_run"], "triggering_user_name", None) or "api"
            return {"disclosure_id": record(state_engine(), req, actor), "request_type": req.request_type}
        except (RequestInvalid, AlreadyDecided, ConfigMissing) as exc:  # not transient: do not retry
            raise AirflowFailException(str(exc)) from None

    @task
    def build_package(request: dict, **context) -> dict:
        """Minimum-necessary package, encrypted to the requester, stored; returns counts and checksums."""
        from airflow.sdk.exceptions import AirflowFailException
        from caldicott.crypto.keys import CertificateError
        from caldicott.disclosure.flow import make_package
        from caldicott.disclosure.package import PackageError
        from caldicott.disclosure.request import DisclosureRequest
        from caldicott.policy.disclosure import policy_for
        from caldicott_airflow.connections import records_engine, state_engine
        from caldicott_airflow.disclosure_sources import ndop_source, pseudonym_key

        req = DisclosureRequest.from_conf(dict(context["params"]))
        pol = policy_for(req.request_type)
        kw = {"opted_out": ndop_source(state_engine()), "pseudonym_key": pseudonym_key()} if pol.deidentify else {}
        try:
            return make_package(records_engine(), state_engine(), req, **kw)
        except (PackageError, CertificateError) as exc:
            raise AirflowFailException(str(exc)) from None

    approve = DisclosureApprovalOperator(task_id="approve_disclosure")

    @task.branch
    def record_decision(**context) -> str:
        """Route by the register's decision: the approval step recorded it from Airflow's HITL record.

        Not from XCom: a task marked successful with a forged result finds no decision here (recorded, fails).
        """
        from airflow.sdk.exceptions import AirflowFailException
        from caldicott.disclosure.flow import DecisionIncomplete, decided_outcome
        from caldicott.disclosure.request import DisclosureRequest
        from caldicott_airflow.connections import state_engine

        did = DisclosureRequest.from_conf(dict(context["params"])).disclosure_id
        try:
            outcome = decided_outcome(state_engine(), did)
        except DecisionIncomplete as exc:
            raise AirflowFailException(str(exc)) from None
        return "release_package" if outcome == "approved" else "write_refusal_letter"

    @task
    def release_package(**context) -> dict:
        """Through the release gateway, exactly once; the register records what went and its checksum."""
        from airflow.sdk.exceptions import AirflowFailException
        from caldicott.disclosure.flow import release
        from caldicott.disclosure.request import DisclosureRequest
        from caldicott_airflow.connections import state_engine
        from caldicott_airflow.disclosure_sources import ConfigMissing, endpoint, open_sender

        req = DisclosureRequest.from_conf(dict(context["params"]))
        try:
            where = endpoint(req.channel, req.connection_id)
            with open_sender(req) as sender:
                result = release(state_engine(), req, sender, req.disclosure_id, endpoint=where)
        except ConfigMissing as exc:
            raise AirflowFailException(str(exc)) from None
        if not result["released"]:
            if result.get("failed") and not result.get("final"):
                raise RuntimeError(f"delivery of {req.disclosure_id} failed; will retry")
            if result.get("failed"):   # the transport's final word (changed host key, mailbox refused)
                raise AirflowFailException(f"delivery of {req.disclosure_id} failed, not retried: "
                                           f"{result.get('reason')}")
            raise AirflowFailException(f"release of {req.disclosure_id} refused: {result.get('reason')}")
        return result

    @task
    def notify_patient(**context) -> dict:
        """The patient's letter, unless the approver recorded a reason not to tell them."""
        from caldicott.disclosure.flow import notify_patient as notify
        from caldicott.disclosure.request import DisclosureRequest
        from caldicott_airflow.connections import records_engine, state_engine
        from caldicott_airflow.disclosure_sources import output_dir
        from caldicott_airflow.service import sending_service

        req = DisclosureRequest.from_conf(dict(context["params"]))
        return notify(records_engine(), state_engine(), req, output_dir(), service=sending_service().name)

    @task
    def write_refusal_letter(**context) -> dict:
        from caldicott.disclosure.flow import write_refusal
        from caldicott.disclosure.request import DisclosureRequest
        from caldicott_airflow.connections import state_engine
        from caldicott_airflow.disclosure_sources import output_dir
        from caldicott_airflow.service import sending_service

        req = DisclosureRequest.from_conf(dict(context["params"]))
        return write_refusal(state_engine(), req, output_dir(), service=sending_service().name)

    build_package(record_request()) >> approve
    released = release_package()
    approve >> record_decision() >> [released, write_refusal_letter()]
    released >> notify_patient()


disclosure_request()
