"""The transfer report as PDF: a Jinja2 template (autoescaped, strict) through the letters' PDF renderer.

Same renderer and fonts as the GP letters (:func:`caldicott.letters.pdf.html_to_pdf`: Helvetica, or embedded
DejaVu / Noto faces for any script), and the letters' score explanation (``_scores_explained.html.j2``) is included,
so a report reads like the service's letters. The template gets only the report's minimum-necessary content
(:func:`caldicott.transfers.build.report_content`) and, for the patient's copy, nothing more.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from caldicott.letters.pdf import html_to_pdf
from caldicott.letters.render import TEMPLATES as LETTER_TEMPLATES
from caldicott.letters.render import _fmt_date
from caldicott.letters.service import Service
from caldicott.transfers.build import TransferData

TEMPLATES = Path(__file__).resolve().parent / "templates"
TITLE = "Transfer of care report"
ATTACHMENT = "transfer-of-care-report.pdf"


@functools.cache
def environment(folder: str | None = None) -> Environment:
    """Transfer templates first, then the letters' (``CALDICOTT_LETTER_TEMPLATES`` or the shipped ones) for the
    shared parts."""
    letters = os.environ.get("CALDICOTT_LETTER_TEMPLATES") or str(LETTER_TEMPLATES)
    return Environment(loader=FileSystemLoader([folder or str(TEMPLATES), letters]), autoescape=True,
                       undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def context(data: TransferData, recipient: str, service: Service, *, gp_copy: bool) -> dict[str, Any]:
    """What the template may see: the report's sections (already minimum necessary), dates formatted."""
    r = data.report
    patient = dict(r["patient"])
    nhs = str(patient.get("nhs_number") or "")
    patient["nhs_number_spaced"] = f"{nhs[:3]} {nhs[3:6]} {nhs[6:]}" if len(nhs) == 10 else nhs
    patient["birth_date"] = _fmt_date(patient.get("birth_date"))
    referral = dict(r["referral"])
    referral["received_date"] = _fmt_date(referral.get("received_date"))
    onward = dict(r["onward"])
    onward["referred_at"] = _fmt_date(onward.get("referred_at"))
    treatment = dict(r["treatment"])
    for k in ("first_contact", "last_contact"):
        treatment[k] = _fmt_date(treatment[k]) if treatment.get(k) else None
    practice = data.practice or {}
    receiver = {k: (v or "the receiving provider") for k, v in r["receiver"].items()}
    contact = {k: v for k, v in r["contact"].items()}
    contact["display_name"] = contact.get("display_name") or "the clinical lead"
    return {"recipient": recipient, "service": service, "report_date": _fmt_date(data.day), "patient": patient,
            "referral": referral, "onward": onward, "treatment": treatment, "scores": r["scores"],
            "meaning": r["meaning"], "contact": contact, "receiver": receiver, "gp_copy": gp_copy,
            "practice": {"name": practice.get("name") or "your GP practice",
                         "ods_code": practice.get("ods_code") or ""}}


def render_markup(data: TransferData, recipient: str, service: Service, *, gp_copy: bool) -> str:
    return environment().get_template("transfer_report.html.j2").render(
        **context(data, recipient, service, gp_copy=gp_copy))


def render_pdf(data: TransferData, recipient: str, service: Service, *, gp_copy: bool,
               created: dt.datetime | None = None) -> bytes:
    """The report for ``recipient`` ("receiver", "gp" or "patient") as PDF."""
    return html_to_pdf(render_markup(data, recipient, service, gp_copy=gp_copy), title=TITLE,
                       created=created or dt.datetime.now(dt.UTC))
