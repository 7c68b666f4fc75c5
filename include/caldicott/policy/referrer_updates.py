"""Minimum-necessary policy for session updates to referrers (flow ``referrer_updates``).

A referring provider whose contract asks for session updates receives, for each of its own referrals,
the sessions that took place in the run's interval. What it receives is decided here, from the
contract's options, and nowhere else:

* every contract: the session columns of :data:`SESSION_FIELDS` (who, when, what kind of session,
  attendance) — enough to update the referrer's patient management system;
* only contracts with ``include_summaries``: the free-text clinical summary of each session
  (:data:`SUMMARY_FIELDS`). A contract without it never receives summary text: the column is absent,
  not merely empty (in ``fhir-r4-v1``: no DocumentReference at all);
* contracts with ``include_activity``: a monthly activity file per referral for invoicing
  (:data:`ACTIVITY_FIELDS`), counts and dates only, no clinical text.

Free text that leaves (the summary) is first cleaned of control characters other than tab and newline and of
Unicode bidirectional overrides (:mod:`caldicott.updates.free_text`); what was removed is reported as counts.

Nothing else from the source reaches a referrer: no names, addresses, postcodes, birth dates,
presenting problems, scores or clinician ids. The national data opt-out does not apply (direct care /
contract); GP-sharing consent is about GPs, not referrers, and does not apply either.

Two session file formats carry exactly the same fields: ``csv-v1`` (one column per field) and
``fhir-r4-v1`` (a FHIR R4 Bundle; the field-to-element mapping is in ``caldicott.updates.fhir`` and
``docs/referrer_updates.md``). Formats are part of the contract with each referrer: a change of columns
or of the mapping is a new version (``csv-v2``, ``fhir-r4-v2``), never an edit of a published one.
"""

from __future__ import annotations

from dataclasses import dataclass

FLOW = "referrer_updates"
COLUMN_SET = "csv-v1"
FHIR_FORMAT = "fhir-r4-v1"
ACTIVITY_COLUMN_SET = "activity-csv-v1"
#: contract ``file_format`` values the session file can be built in (the activity file is always CSV)
SUPPORTED_FORMATS = frozenset({COLUMN_SET, FHIR_FORMAT})

#: Session fields every contract receives, in file order (csv-v1; fhir-r4-v1 maps the same fields).
SESSION_FIELDS: tuple[str, ...] = (
    "contract_id",            # the contract under which the row is sent
    "referrer_ods",           # the referrer's ODS code (the recipient)
    "provider_referral_id",   # ServiceRequestId: the provider's id of the referral the referrer made
    "nhs_number",             # to match the patient in the referrer's PAS
    "care_contact_id",        # CareContactId: stable id of the session (for updates and de-duplication)
    "contact_date",           # Europe/London calendar date, YYYY-MM-DD
    "contact_time",           # Europe/London wall-clock time, HH:MM
    "duration_minutes",
    "appointment_type",       # AppType code
    "attendance",             # AttendOrDNACode
    "consultation_mechanism",  # ConsMechanism code
)

#: Extra columns only for contracts whose ``include_summaries`` is true.
SUMMARY_FIELDS: tuple[str, ...] = ("clinical_summary",)

#: Monthly activity per referral (activity-csv-v1): counts and dates, no clinical text.
ACTIVITY_FIELDS: tuple[str, ...] = (
    "contract_id",
    "referrer_ods",
    "month",                  # YYYY-MM
    "provider_referral_id",
    "nhs_number",
    "sessions_attended",      # AttendOrDNACode 5 or 6
    "sessions_dna",           # 3 did not attend, 7 arrived late and not seen
    "sessions_cancelled",     # 2 by the patient, 4 by the provider
    "minutes_attended",
    "first_contact_date",
    "last_contact_date",
)

#: Reason codes this flow adds to the shared record checks' (:data:`caldicott.records.checks.REASONS`).
REASONS = {
    "duplicate_care_contact_id": "the care contact id is on more than one session row (data set rule IDS20143): "
                                 "the referrer keys updates on it, so none of those rows is sent",
}

ATTENDED = frozenset({"5", "6"})
DNA = frozenset({"3", "7"})
CANCELLED = frozenset({"2", "4"})


@dataclass(frozen=True)
class ContractOptions:
    """The options of one contract that decide what its referrer receives (no patient data)."""

    contract_id: str
    referrer_ods: str
    transport: str
    file_format: str = COLUMN_SET
    include_summaries: bool = False
    include_activity: bool = True
    encrypt: bool = False


def session_fields(options: ContractOptions) -> tuple[str, ...]:
    """The session columns ``options`` allows, in file order."""
    if options.file_format not in SUPPORTED_FORMATS:
        raise ValueError(f"contract {options.contract_id}: unsupported file format {options.file_format!r}")
    return SESSION_FIELDS + (SUMMARY_FIELDS if options.include_summaries else ())


def activity_fields(options: ContractOptions) -> tuple[str, ...]:
    if not options.include_activity:
        return ()
    return ACTIVITY_FIELDS


def rules_applied(options: ContractOptions) -> list[str]:
    """What this flow applied for a contract, and why (every output states its rules)."""
    rules = [
        "direct care / contract: only referrals made by this contract's referrer",
        "only sessions whose London date falls in the run's interval",
        f"format {options.file_format}: session dates, type and attendance",
        "national data opt-out not applied: direct care",
    ]
    rules.append("clinical summaries included: the contract requires them" if options.include_summaries
                 else "clinical summaries withheld: the contract does not require them")
    if options.encrypt:
        rules.append("file CMS-encrypted to the referrer's certificate")
    return rules
