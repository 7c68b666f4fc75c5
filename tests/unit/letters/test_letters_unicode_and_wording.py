"""Letters print every script a name may be written in, and say what they should to whom (issue 13).

Unicode: DejaVu Sans (matplotlib) with Noto Sans Devanagari and Noto Sans CJK as fallbacks, embedded and subset per
letter (caldicott.letters.pdf); the text is read back out of the PDF with pypdf, a reader no one here wrote.
"""

from __future__ import annotations

import datetime as dt
import io

import pytest
from caldicott.letters import flow
from caldicott.letters.pdf import pdf_text
from caldicott.letters.render import attachment_name, render_markup, render_pdf

from .test_letters_render import SERVICE, _letter

NAMES = {
    "greek": ("Ζωή", "Παπαδοπούλου"),
    "cyrillic": ("Иван", "Петров"),
    "arabic": ("محمد", "الأحمد"),
    "hebrew": ("שלום", "כהן"),
    "chinese": ("小明", "王"),
    "japanese": ("太郎", "山田"),
    "korean": ("민준", "김"),
    "devanagari": ("राम", "शर्मा"),
}


def _plain(text: str) -> str:
    """Extracted text without whitespace (pypdf spaces glyphs by position) or the NULs it reads between the
    2-byte codes of a CFF (CJK) font."""
    return "".join(text.replace("\x00", "").split())


@pytest.mark.parametrize("script", sorted(NAMES))
@pytest.mark.parametrize("recipient", ["gp", "patient"])
def test_a_name_in_any_script_prints_and_reads_back(script, recipient):
    given, family = NAMES[script]
    data = render_pdf(_letter(given=given, family=family), recipient, SERVICE)
    text = _plain(pdf_text(data))
    assert _plain(given) in text and _plain(family) in text
    assert b"FontFile" in data           # a Unicode face is embedded (subset), not a core font


def test_fonts_are_subset_per_letter():
    small = render_pdf(_letter(given="Ζωή", family="Lee"), "gp", SERVICE)
    cjk = render_pdf(_letter(given="小明", family="王"), "gp", SERVICE)
    assert len(small) < 60_000 and len(cjk) < 80_000      # a few glyphs each, not 16 MB of CJK font


@pytest.mark.parametrize("event", ["assessment", "discharge"])
@pytest.mark.parametrize("recipient", ["gp", "patient"])
def test_every_letter_names_its_clinician_and_the_service_address(event, recipient):
    service = SERVICE
    text = pdf_text(render_pdf(_letter(given="Ann", family="Lee", event=event), recipient, service))
    assert service.clinician.display in text and service.clinician.role in text
    assert service.address in text and service.phone in text


def test_grammar_your_patient_was_referred():
    gp = render_markup(_letter(given="Ann", family="Lee"), "gp", SERVICE)
    patient = render_markup(_letter(given="Ann", family="Lee"), "patient", SERVICE)
    assert "Your patient was referred" in gp and "were referred" not in gp.replace("You were", "")
    assert "You were referred" in patient


def test_discharge_letter_explains_the_scores():
    text = " ".join(pdf_text(render_pdf(_letter(given="Ann", family="Lee", event="discharge"), "gp", SERVICE)).split())
    for needle in ("PHQ-9 (0 to 27) measures symptoms of depression", "GAD-7 (0 to 21)", "WSAS (0 to 40)",
                   "Recovery means", "Reliable improvement means"):
        assert needle in text


def test_the_patients_copy_carries_no_instructions_meant_for_the_gp():
    letter = _letter(given="Ann", family="Lee", event="discharge")
    letter.referral["discharge_recommendations"] = "Please review the SSRI dose in 4 weeks."
    gp = " ".join(pdf_text(render_pdf(letter, "gp", SERVICE)).split())
    patient = " ".join(pdf_text(render_pdf(letter, "patient", SERVICE)).split())
    assert "review the SSRI dose" in gp and "Recommendations" in gp
    assert "review the SSRI dose" not in patient and "We have sent our recommendations to your GP" in patient
    assert "Dear colleague" not in patient and "Your patient" not in patient


def test_pdf_creation_date_is_the_real_one():
    from pypdf import PdfReader

    at = dt.datetime(2026, 10, 15, 6, 1, 2, tzinfo=dt.UTC)
    meta = PdfReader(io.BytesIO(render_pdf(_letter(given="Ann", family="Lee"), "gp", SERVICE, created=at))).metadata
    assert meta.creation_date.replace(tzinfo=dt.UTC) == at
    now = PdfReader(io.BytesIO(render_pdf(_letter(given="Ann", family="Lee"), "gp", SERVICE))).metadata.creation_date
    assert abs(now.replace(tzinfo=dt.UTC) - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=5)


def test_attachments_are_named_for_what_the_letter_is():
    assert attachment_name("assessment") == "assessment-letter.pdf"
    assert attachment_name("discharge") == "discharge-letter.pdf"
    letter = _letter(given="Ann", family="Lee", email="ann@patients.example")
    ch = flow.Channels({}, SERVICE, "letters@nhs.example")
    (item,) = list(flow.outbound_items([letter], "patient", "secure-email", "2026-10-14/patient/secure-email", ch,
                                       set()))
    assert b'filename="assessment-letter.pdf"' in item.payload and b"Lee" not in item.payload.split(b"\r\n\r\n")[0]
