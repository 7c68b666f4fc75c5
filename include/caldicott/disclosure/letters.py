"""Plain-text letters of the disclosure flow: the patient's notification and the refusal to the requester.

Written to the service's output folder for posting or sending by the usual patient-letter route. The patient
letter names the patient (it goes to them), so it lives in the outputs, never in Airflow: XCom and logs
carry only its path relative to the output folder.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from caldicott.policy.disclosure import CATEGORY_LABELS, Category, policy_for


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    return path


def patient_notification(path: Path, *, patient: Mapping[str, Any], request: Mapping[str, Any], categories: list[str],
                         decided_on: dt.date, legal_basis_text: str, service: str) -> Path:
    """Tell the patient what was disclosed, to whom, when and why ("no surprises").

    ``service`` is the sending service's name as configured for all its letters (no default)."""
    if not service:
        raise ValueError("the service's name is required: it has no default")
    name = f"{patient.get('given_name', '')} {patient.get('family_name', '')}".strip()
    address = "\n".join(x for x in (name, patient.get("address_line") or "", patient.get("postcode") or "") if x)
    items = "\n".join(f"  - {CATEGORY_LABELS[Category(c)]}" for c in categories) or "  - (none)"
    text = f"""{address}

{decided_on:%d %B %Y}

Dear {name},

Information we have shared about you

We are writing to let you know that {service} has shared some of the information we hold
about you with {request['requester_organisation']}.
Kind of request: {policy_for(request['request_type']).label}; their reference: {request['reference']}.

What we shared, covering {request['date_from']} to {request['date_to']}:
{items}

Why: {request['purpose']}
The law that allowed it: {legal_basis_text}

We shared only what was needed for this purpose, and we sent it encrypted. A senior member of staff
reviewed the request before anything was shared, and we keep a record of the decision.

If you have questions or concerns, please contact the service. You can also contact our Data Protection
Officer, or the Information Commissioner's Office (ico.org.uk, 0303 123 1113).

Yours sincerely,

Service manager, {service}
"""
    return _write(path, text)


def refusal(path: Path, *, request: Mapping[str, Any], decided_on: dt.date, reasons: str, service: str) -> Path:
    """Tell the requester the request was refused, and why, without saying anything about the patient."""
    if not service:
        raise ValueError("the service's name is required: it has no default")
    text = f"""{request['requester_person']}
{request['requester_organisation']}

{decided_on:%d %B %Y}

Your reference: {request['reference']}

Dear {request['requester_person']},

Request for information

We have considered your request ({policy_for(request['request_type']).label}) and we are not able to
disclose the information asked for.

Reason: {reasons}

This decision was made by a service manager under the service's confidentiality procedure and is recorded in
our disclosure register. If you hold a court order or other legal authority that requires disclosure, or
the person concerned has given consent, please send it to us quoting your reference and we will
consider the request again.

Yours sincerely,

Service manager, {service}
"""
    return _write(path, text)
