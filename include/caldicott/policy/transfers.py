"""Transfer-of-care policy: what the receiving provider's patient report may carry, and how it may go.

The privacy notice: "where we transfer your care to another healthcare provider ... we provide them with a patient
report so they have the details of your condition and the treatment provided by us". So, for every onward referral
(``onward_referral``, IDS105) the receiving provider (``receiving_org_code`` → ``organisation``) gets a report, the
patient's GP is copied unless the patient declined GP sharing (as for the letters: :mod:`caldicott.policy.letters`),
and the patient gets a copy.

Minimum necessary (Caldicott principle 3): the report may show only the fields in :data:`REPORT_FIELDS` — what the
receiver needs to take the patient on safely (who the patient is, the presenting problem, what treatment was given
and how it went, the scores first and last, the risk the clinician recorded, why the care moves, whom to call).
Never session notes (``care_contact.clinical_summary``), never the patient's contact details or address (the
receiver gets those with the referral itself), never employment, demographics or other referrals.
``tests/unit/transfers/test_minimum_necessary.py`` decrypts what was sent and checks nothing else left.

Receiver channels, per the organisation's record: ``mesh`` (its ``mesh_mailbox`` and ``mesh_workflow``),
``smime-email`` (its ``email`` and an RSA ``certificate_pem``), ``sftp`` (its ``connection_id``, ``remote_path`` and a
``certificate_pem`` the report is CMS-encrypted to). Anything missing ⇒ the report is **held** with a reason code and
on-call is alerted; never sent plain. The receiver's ``country`` goes on every item and the release gateway refuses a
country that is blank or not on the adequacy list (:mod:`caldicott.policy.adequacy`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from caldicott.policy.letters import cert_ok
from caldicott.policy.purposes import Protection, Purpose

FLOW = "transfer_of_care"
CHANNELS = ("mesh", "smime-email", "sftp")

#: Everything a report may show, by source. The renderer is given only these (tests check the bytes that left).
PATIENT_FIELDS = ("given_name", "family_name", "birth_date", "nhs_number")
REFERRAL_FIELDS = ("received_date", "presenting_problem", "presenting_problem_code", "risk_summary")
ONWARD_FIELDS = ("referred_at", "reason", "receiving_org_code")
TREATMENT_FIELDS = ("attended", "missed", "therapy_types", "digital_programmes", "first_contact", "last_contact")
SCORE_FIELDS = ("phq9_first", "phq9_last", "gad7_first", "gad7_last", "wsas_first", "wsas_last")
CONTACT_FIELDS = ("display_name", "role", "email", "telephone")
RECEIVER_FIELDS = ("ods_code", "name")
REPORT_FIELDS = {"patient": PATIENT_FIELDS, "referral": REFERRAL_FIELDS, "onward": ONWARD_FIELDS,
                 "treatment": TREATMENT_FIELDS, "scores": SCORE_FIELDS, "contact": CONTACT_FIELDS,
                 "receiver": RECEIVER_FIELDS}
#: Source columns that must never reach a report (checked by the tests against the bytes that left).
NEVER = ("clinical_summary", "address_line", "postcode", "email", "phone", "patient_certificate_pem",
         "ethnic_category", "gender", "discharge_recommendations", "assessment_plan")

REASONS = {
    "receiver_unknown": "the onward referral names no receiving organisation, or one not in the organisation table",
    "receiver_no_channel": "the receiving organisation has no delivery channel Caldicott supports (mesh, "
                           "smime-email, sftp): report held, never sent plain",
    "receiver_address_missing": "the receiver's channel lacks its address (MESH mailbox and workflow, e-mail address, "
                                "or SFTP connection and folder): report held",
    "receiver_certificate_missing": "smime-email or sftp receiver without a valid RSA encryption certificate: report "
                                    "held, never sent plain",
    "receiver_country_unknown": "the receiving organisation's country is blank or not an ISO 3166-1 code: report "
                                "held (the release gateway would refuse it)",
    "contact_missing": "the onward referral names no contact in care_personnel: the report needs a named contact",
    "gp_sharing_declined": "the patient declined sharing with their GP at registration; no GP copy",
    "invalid_nhs_number": "NHS number missing, not ten digits, or its check digit is wrong",
    "unreadable_value": "a stored value cannot be read as its column's type (an impossible date, text in a number)",
    "referral_unknown": "the onward referral's service request is not in the referral table",
}
HELD = ("receiver_no_channel", "receiver_address_missing", "receiver_certificate_missing", "receiver_country_unknown",
        "contact_missing")


@dataclass(frozen=True)
class ReceiverRoute:
    """Where the receiver's report goes: channel, protection, address and the facts the gateway needs."""

    channel: str                # "mesh" | "smime-email" | "sftp"
    protection: Protection
    recipient: str              # receiving ODS code (opaque)
    address: str                # MESH mailbox, e-mail address or remote folder
    country: str                # ISO 3166-1 alpha-2, from organisation.country
    workflow: str = ""          # MESH workflow id
    connection_id: str = ""     # SFTP: the receiver's Airflow connection
    purpose: Purpose = Purpose.TRANSFER_OF_CARE


@dataclass(frozen=True)
class ReceiverDecision:
    """A route for the receiver's report, or the reason it is held / quarantined (a reason code)."""

    route: ReceiverRoute | None = None
    outcome: str = "send"       # "send" | "held" | "quarantined"
    reason: str | None = None


def _country(org: dict[str, Any]) -> str:
    from caldicott.policy.adequacy import normalise

    return normalise(org.get("country"))


def receiver_decision(org: dict[str, Any] | None, *, contact_ok: bool) -> ReceiverDecision:
    """How the report reaches the receiving organisation ``org`` (its ``organisation`` row), if it can."""
    if org is None:
        return ReceiverDecision(outcome="quarantined", reason="receiver_unknown")
    code = str(org["ods_code"])
    channel = org.get("channel")
    if channel not in CHANNELS:
        return ReceiverDecision(outcome="held", reason="receiver_no_channel")
    country = _country(org)
    if channel == "mesh":
        if not (org.get("mesh_mailbox") and org.get("mesh_workflow")):
            return ReceiverDecision(outcome="held", reason="receiver_address_missing")
        route = ReceiverRoute("mesh", Protection.MESH, code, str(org["mesh_mailbox"]), country,
                              workflow=str(org["mesh_workflow"]))
    elif channel == "smime-email":
        if not org.get("email"):
            return ReceiverDecision(outcome="held", reason="receiver_address_missing")
        if not cert_ok(org.get("certificate_pem")):
            return ReceiverDecision(outcome="held", reason="receiver_certificate_missing")
        route = ReceiverRoute("smime-email", Protection.SMIME, code, str(org["email"]), country)
    else:
        if not (org.get("connection_id") and org.get("remote_path")):
            return ReceiverDecision(outcome="held", reason="receiver_address_missing")
        if not cert_ok(org.get("certificate_pem")):
            return ReceiverDecision(outcome="held", reason="receiver_certificate_missing")
        route = ReceiverRoute("sftp", Protection.CMS, code, str(org["remote_path"]), country,
                              connection_id=str(org["connection_id"]))
    if not country:
        return ReceiverDecision(route=route, outcome="held", reason="receiver_country_unknown")
    if not contact_ok:
        return ReceiverDecision(route=route, outcome="held", reason="contact_missing")
    return ReceiverDecision(route=route)


def minimum(section: str, row: dict[str, Any] | None) -> dict[str, Any]:
    """Only the fields a report may carry from ``section`` (a key of :data:`REPORT_FIELDS`)."""
    row = row or {}
    return {f: row.get(f) for f in REPORT_FIELDS[section]}
