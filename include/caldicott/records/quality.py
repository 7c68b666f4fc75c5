"""A scan of the whole records source with the shared record checks, for the data-quality lead.

Each flow quarantines what it cannot use as it goes; this scan finds the same faults across the whole
source once a day, so they can be fixed at source before a flow trips over them. It stores each
finding in the quarantine under the flow ``records_quality`` and returns counts only.
"""

from __future__ import annotations

from typing import Any, TypedDict

from sqlalchemy import Engine

from caldicott.records import checks, queries
from caldicott.state.quarantine import Quarantined, quarantine

FLOW = "records_quality"


class ScanSummary(TypedDict):
    """What :func:`scan` returns (the ``records_quality`` DAG's ``scan_records`` task pushes it to XCom)."""

    records_checked: dict[str, int]     # table -> records read
    quarantined: int
    by_reason: dict[str, int]           # reason code -> findings, sorted by code


def scan(records: Engine, state: Engine, run_key: str) -> ScanSummary:
    """Run every shared check over the source; quarantine findings under ``run_key``; return counts."""
    unreadable: list[Quarantined] = []

    def note(record_type: str, id_column: str) -> queries.OnUnreadable:
        def add(row: dict[str, Any], _cols: list[str]) -> None:
            unreadable.append(Quarantined(record_type, str(row[id_column]), "unreadable_value",
                                                 checks.REASONS["unreadable_value"]))
        return add

    practices = queries.table(records, "gp_practice", ["ods_code"])
    orgs = queries.table(records, "organisation", ["ods_code"])
    patients = queries.table(records, "patient", ["local_patient_id", "nhs_number", "postcode", "birth_date",
                                                  "gp_practice_code"], note("patient", "local_patient_id"))
    referrals = queries.table(records, "referral", ["service_request_id", "received_date", "discharge_date",
                                                    "referrer_org_code"], note("referral", "service_request_id"))
    contacts = queries.table(records, "care_contact", ["care_contact_id", "service_request_id", "contact_at"],
                             note("care_contact", "care_contact_id"))
    scores = queries.table(records, "coded_assessment", ["assessment_id", "tool_code", "score"],
                           note("coded_assessment", "assessment_id"))
    found = [
        *unreadable,
        *checks.patient_problems(patients, practices["ods_code"], need_gp=True),
        *checks.referral_problems(referrals, orgs["ods_code"]),
        *checks.contact_problems(contacts, referrals),
        *checks.score_problems(scores.dropna(subset=["score"])),
    ]
    quarantine(state, FLOW, run_key, found)
    by_reason: dict[str, int] = {}
    for q in found:
        by_reason[q.reason_code] = by_reason.get(q.reason_code, 0) + 1
    return {
        "records_checked": {"patient": len(patients), "referral": len(referrals), "care_contact": len(contacts),
                            "coded_assessment": len(scores)},
        "quarantined": len(found),
        "by_reason": dict(sorted(by_reason.items())),
    }
