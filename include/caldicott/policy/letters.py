"""GP letters policy: who gets a letter, by which channel, with which fields (one place: docs/architecture.md).

Rules, each stated in the run's report by code:

* ``gp_sharing_declined`` — the patient declined sharing with their GP at registration: **no GP letter**;
  the patient still gets their copy ("no surprises"). Counted as *withheld*, by letter id.
* GP channel, chosen per practice from the records source: ``smime-email`` (S/MIME, AES-256, to the
  practice's certificate) or ``mesh`` (GP Connect Send Document). A practice on ``smime-email`` without a
  valid certificate gets **no plain fallback**: its letters are *held* (ledger) and the practice is
  quarantined (``practice_certificate_missing``). Any other channel is quarantined
  (``unknown_channel``).
* Patient copy, always (unless the record itself is unusable): ``email`` → the provider's NHSmail
  encryption gateway (``[secure]`` in the subject); ``smime`` → S/MIME to the patient's own certificate
  (the gateway if that certificate is not usable); ``post`` → the print-and-post batch, encrypted at rest.
* Records that cannot be addressed safely are quarantined: invalid or duplicated NHS number (both
  letters), no / unknown GP practice (GP letter), unusable postcode for a posted copy, unknown copy channel.

Minimum necessary: :data:`GP_FIELDS` and :data:`PATIENT_FIELDS` are the only source fields a letter may
show; no session notes (``clinical_summary``) ever.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from caldicott.crypto.keys import CertificateError, load_certificate
from caldicott.policy.purposes import Protection, Purpose

FLOW = "gp_letters"

GP_CHANNELS = ("smime-email", "mesh")
COPY_CHANNELS = ("email", "smime", "post")

#: Patient fields a letter may carry (identifiers the GP needs to file it; address only on the patient's copy).
GP_FIELDS = ("given_name", "family_name", "birth_date", "nhs_number")
PATIENT_FIELDS = (*GP_FIELDS, "address_line", "postcode")
#: Referral fields a letter may carry. Never ``clinical_summary`` (session notes).
REFERRAL_FIELDS = ("received_date", "presenting_problem", "presenting_problem_code", "assessment_plan",
                   "discharge_date", "end_code", "discharge_recommendations")

REASONS = {
    "gp_sharing_declined": "the patient declined sharing with their GP at registration; patient copy only",
    "invalid_nhs_number": "NHS number missing, not ten digits, or its check digit is wrong",
    "duplicate_nhs_number": "the same NHS number is held for more than one local patient",
    "missing_gp_practice": "no registered GP practice is recorded",
    "unknown_gp_practice": "the registered GP practice is not in the practice table",
    "unknown_channel": "the practice's delivery channel is not one Caldicott supports (smime-email, mesh)",
    "practice_certificate_missing": "smime-email practice without a valid certificate: letters held, never sent plain",
    "practice_address_missing": "the practice has no e-mail address or MESH mailbox for its channel",
    "unknown_copy_channel": "the patient's copy channel is not email, smime or post",
    "patient_address_missing": "a posted copy needs an address line and a valid postcode",
    "patient_email_missing": "an e-mailed copy needs an e-mail address",
    "discharge_before_referral": "discharge date is before the referral was received",
    "score_out_of_range": "a coded score is outside its tool's range",
    "unreadable_value": "a stored value cannot be read as its column's type (an impossible date, text in a number)",
}


@dataclass(frozen=True)
class Route:
    """Where one letter goes: recipient kind, channel, protection and an opaque recipient id."""

    recipient_kind: str        # "gp" | "patient"
    channel: str               # "smime-email" | "mesh" | "secure-email" | "smime" | "post"
    protection: Protection
    recipient: str             # ODS code or local patient id (opaque ids only)
    address: str = ""          # e-mail or MESH mailbox; not shown in XCom
    purpose: Purpose = Purpose.GP_LETTER


@dataclass(frozen=True)
class Send:
    """The letter goes to this recipient by ``route``."""

    recipient_kind: str
    route: Route
    #: the GP half only: this decision checked the patient's GP sharing consent and found it given (the source of
    #: the ``gp_sharing_consent`` evidence the flow mints for the letter's bytes)
    gp_sharing_consent: bool = False
    outcome: Literal["send"] = field(default="send", init=False)


@dataclass(frozen=True)
class Hold:
    """The letter has a route but is not sent now (a practice on ``smime-email`` without a valid certificate): the
    ledger holds it, and ``record_type``/``record_id`` is quarantined with ``reason``."""

    recipient_kind: str
    route: Route
    reason: str
    record_type: str
    record_id: str
    gp_sharing_consent: bool = False
    outcome: Literal["held"] = field(default="held", init=False)


@dataclass(frozen=True)
class Withhold:
    """No letter for this recipient, by rule (``gp_sharing_declined``): counted, nothing quarantined."""

    recipient_kind: str
    reason: str
    record_type: str
    record_id: str
    gp_sharing_consent: bool = False
    outcome: Literal["withheld"] = field(default="withheld", init=False)


@dataclass(frozen=True)
class Quarantine:
    """No letter: the recipient cannot be addressed safely. With a ``reason``, ``record_type``/``record_id`` is
    quarantined for it; without one the patient record itself is unusable, and the caller quarantines it for the
    record's own problems."""

    recipient_kind: str
    reason: str | None = None
    record_type: str | None = None
    record_id: str | None = None
    gp_sharing_consent: bool = False
    outcome: Literal["quarantined"] = field(default="quarantined", init=False)


#: A routing outcome for one recipient of a letter; ``outcome`` tells them apart (``if d.outcome == "send"``
#: narrows to :class:`Send`), and each carries only the fields its outcome sets.
Decision = Send | Hold | Withhold | Quarantine


def cert_ok(pem: str | None) -> bool:
    try:
        load_certificate(pem)
    except CertificateError:
        return False
    return True


def gp_decision(patient: dict[str, Any], practice: dict[str, Any] | None, *, patient_ok: bool) -> Decision:
    """The GP half of a letter (``patient_ok`` False when the record is already quarantined)."""
    pid = patient["local_patient_id"]
    if not patient_ok:
        return Quarantine("gp")
    if not patient.get("gp_sharing_consent", True):
        return Withhold("gp", reason="gp_sharing_declined", record_type="patient", record_id=pid)
    return replace(_gp_route(patient, practice), gp_sharing_consent=True)


def _gp_route(patient: dict[str, Any], practice: dict[str, Any] | None) -> Decision:
    """Where the GP half goes, once the patient's GP sharing consent is known to be given."""
    pid = patient["local_patient_id"]
    code = patient.get("gp_practice_code")
    if not code:
        return Quarantine("gp", reason="missing_gp_practice", record_type="patient", record_id=pid)
    if practice is None:
        return Quarantine("gp", reason="unknown_gp_practice", record_type="patient", record_id=pid)
    channel = practice.get("channel")
    if channel not in GP_CHANNELS:
        return Quarantine("gp", reason="unknown_channel", record_type="gp_practice", record_id=code)
    if channel == "smime-email":
        if not practice.get("email"):
            return Quarantine("gp", reason="practice_address_missing", record_type="gp_practice", record_id=code)
        route = Route("gp", "smime-email", Protection.SMIME, code, practice["email"])
        if not cert_ok(practice.get("certificate_pem")):
            return Hold("gp", route, reason="practice_certificate_missing", record_type="gp_practice", record_id=code)
        return Send("gp", route)
    if not practice.get("mesh_mailbox"):
        return Quarantine("gp", reason="practice_address_missing", record_type="gp_practice", record_id=code)
    return Send("gp", Route("gp", "mesh", Protection.MESH, code, practice["mesh_mailbox"]))


def patient_decision(patient: dict[str, Any], *, patient_ok: bool, postcode_ok: bool) -> Decision:
    """The patient's own copy: always sent if the record is usable and a protected channel exists."""
    pid = patient["local_patient_id"]
    if not patient_ok:
        return Quarantine("patient")
    channel = patient.get("copy_channel") or "email"
    email = patient.get("email")
    if channel == "smime" and email and cert_ok(patient.get("patient_certificate_pem")):
        return Send("patient", Route("patient", "smime", Protection.SMIME, pid, email, Purpose.PATIENT_COPY))
    if channel in ("email", "smime"):
        if not email:
            return Quarantine("patient", reason="patient_email_missing", record_type="patient", record_id=pid)
        return Send("patient", Route("patient", "secure-email", Protection.SECURE_GATEWAY, pid, email,
                                     Purpose.PATIENT_COPY))
    if channel == "post":
        if not (patient.get("address_line") and postcode_ok):
            return Quarantine("patient", reason="patient_address_missing", record_type="patient", record_id=pid)
        return Send("patient", Route("patient", "post", Protection.STAGED_ENCRYPTED, pid, "", Purpose.PATIENT_COPY))
    return Quarantine("patient", reason="unknown_copy_channel", record_type="patient", record_id=pid)


def minimum_patient(patient: dict[str, Any], recipient_kind: str) -> dict[str, Any]:
    """Only the fields the recipient may see."""
    fields = GP_FIELDS if recipient_kind == "gp" else PATIENT_FIELDS
    out = {f: patient.get(f) for f in fields}
    nhs = str(out.get("nhs_number") or "")
    out["nhs_number_spaced"] = f"{nhs[:3]} {nhs[3:6]} {nhs[6:]}" if len(nhs) == 10 else nhs
    return out
