"""Letter text from Jinja2 templates a service can edit, rendered to PDF.

Templates live in ``letters/templates`` (override the folder with ``CALDICOTT_LETTER_TEMPLATES``). The
environment **autoescapes** everything and is strict about undefined names, so a template typo fails
loudly in tests rather than printing blanks to a GP. Only the minimum-necessary fields
(:mod:`caldicott.policy.letters`) are passed to a template: it cannot show what it is not given.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
from pathlib import Path
from typing import Any, Protocol

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from caldicott.letters.pdf import html_to_pdf
from caldicott.letters.service import Service
from caldicott.policy.letters import minimum_patient

TEMPLATES = Path(__file__).resolve().parent / "templates"


class LetterContent(Protocol):
    """What rendering reads of a letter: a :class:`caldicott.letters.build.LetterData`, or the render worker's copy
    of just these fields (:mod:`caldicott.letters.render_pool`). A protocol, not ``LetterData`` itself, so that the
    worker process need not import ``letters.build`` (and pandas) to render, and its copy type-checks as a letter."""

    @property
    def event(self) -> str: ...
    @property
    def event_date(self) -> dt.date: ...
    @property
    def patient(self) -> dict[str, Any]: ...
    @property
    def practice(self) -> dict[str, Any] | None: ...
    @property
    def referral(self) -> dict[str, Any]: ...
    @property
    def scores(self) -> dict[str, Any]: ...
    @property
    def outcome(self) -> dict[str, Any]: ...


@functools.cache
def environment(folder: str | None = None) -> Environment:
    folder = folder or os.environ.get("CALDICOTT_LETTER_TEMPLATES") or str(TEMPLATES)
    return Environment(loader=FileSystemLoader(folder), autoescape=True, undefined=StrictUndefined,
                       trim_blocks=True, lstrip_blocks=True)


def _fmt_date(v: dt.date | str | None) -> str:
    """A date as a letter prints it (``3 March 2024``). The source gives dates, datetimes (their date is printed)
    or ISO strings (read by their date part); nothing recorded prints as such."""
    if v is None:
        return "not recorded"
    if isinstance(v, str):
        v = dt.date.fromisoformat(v[:10])
    if isinstance(v, dt.datetime):
        v = v.date()
    return f"{v.day} {v:%B %Y}"


def context(letter: LetterContent, recipient_kind: str, service: Service) -> dict[str, Any]:
    """What a template may see for this recipient (minimum necessary)."""
    patient = minimum_patient(letter.patient, recipient_kind)
    patient["birth_date"] = _fmt_date(patient.get("birth_date"))
    referral = dict(letter.referral)
    for k in ("received_date", "discharge_date"):
        referral[k] = _fmt_date(referral.get(k))
    practice = letter.practice or {}
    return {
        "recipient": recipient_kind,
        "service": service,
        "letter_date": _fmt_date(letter.event_date),
        "patient": patient,
        "practice": {"name": practice.get("name") or "your GP practice", "ods_code": practice.get("ods_code") or ""},
        "gp_copy": bool(letter.patient.get("gp_sharing_consent", True)) and letter.practice is not None,
        "referral": referral,
        "assessment": {"date": letter.scores.get("date") or _fmt_date(letter.event_date)},
        "scores": letter.scores,
        "outcome": letter.outcome,
    }


def render_markup(letter: LetterContent, recipient_kind: str, service: Service) -> str:
    template = environment().get_template(f"{letter.event}.html.j2")
    return template.render(**context(letter, recipient_kind, service))


TITLES = {"assessment": "Assessment letter", "discharge": "Discharge letter"}


def letter_title(event: str) -> str:
    """What the letter is, in words: the PDF's title, the Send Document title, the attachment's name."""
    return TITLES.get(event, "Letter")


def attachment_name(event: str) -> str:
    """A file name that says what the letter is (no patient data): ``assessment-letter.pdf``."""
    return letter_title(event).lower().replace(" ", "-") + ".pdf"


def render_pdf(letter: LetterContent, recipient_kind: str, service: Service, *,
               created: dt.datetime | None = None) -> bytes:
    """The letter as PDF; ``created`` (default: now) is the PDF's creation date."""
    return html_to_pdf(render_markup(letter, recipient_kind, service), title=letter_title(letter.event),
                       created=created or dt.datetime.now(dt.UTC))


def email_body(service: Service) -> str:
    return environment().get_template("email_body.txt.j2").render(service=service)
