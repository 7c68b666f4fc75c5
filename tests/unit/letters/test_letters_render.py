"""Letter templates and PDF rendering: autoescaping, literal text, minimum necessary, no session notes."""

from __future__ import annotations

import datetime as dt

import pytest
from caldicott.letters import pdf
from caldicott.letters.build import LetterData, find_events, load_letters
from caldicott.letters.pdf import html_to_pdf, parse_blocks, pdf_text
from caldicott.letters.render import render_markup, render_pdf
from caldicott.records.synth import SUMMARIES

from devtools.demo_service import demo_service

SERVICE = demo_service()   # the demo's synthetic service (production: Variable caldicott_service, no default)


def _letter(given="<script>alert(1)</script>", family="O'Brien-Zoë", event="assessment", **patient) -> LetterData:
    p = {"local_patient_id": "P0000001", "nhs_number": "9990000018", "given_name": given, "family_name": family,
         "birth_date": dt.date(1980, 5, 17), "postcode": "LS6 2ZZ", "address_line": "1 <b>Mill</b> Lane",
         "gp_practice_code": "Z84000", "gp_sharing_consent": True, "copy_channel": "email", **patient}
    practice = {"ods_code": "Z84000", "name": "Synthetic Practice 1", "channel": "smime-email"}
    referral = {"received_date": dt.date(2026, 10, 1), "presenting_problem": "Panic disorder",
                "presenting_problem_code": "F41.0", "assessment_plan": "CBT & <i>review</i>",
                "discharge_date": dt.date(2026, 10, 20), "end_code": "46", "discharge_recommendations": "None"}
    return LetterData("R00000001", event, dt.date(2026, 10, 14), p, practice, referral,
                      scores={"phq9": 14, "gad7": 9, "wsas": 21, "date": "14 October 2026"},
                      outcome={"attended": 6, "missed": 1, "phq9_first": 14, "phq9_last": 5, "gad7_first": 9,
                               "gad7_last": 4, "wsas_first": 21, "wsas_last": 8, "recovery_text": "yes",
                               "reliable_improvement_text": "yes", "end_reason": "completed"})


def test_values_are_autoescaped_in_markup_and_literal_in_pdf():
    letter = _letter()
    markup = render_markup(letter, "patient", SERVICE)
    assert "<script>" not in markup and "&lt;script&gt;" in markup
    assert "<b>Mill</b>" not in markup  # a value cannot become markup
    text = pdf_text(render_pdf(letter, "patient", SERVICE))
    assert "<script>alert(1)</script>" in text
    assert "O'Brien-Zoë" in text
    assert "1 <b>Mill</b> Lane" in text
    assert "CBT & <i>review</i>" in text


def test_non_latin_text_switches_to_dejavu_and_stays_literal():
    data = render_pdf(_letter(given="Łukasz", family="Ŝtefan-Øyvind ✓"), "gp", SERVICE)
    text = pdf_text(data)
    assert "Łukasz" in text and "Ŝtefan" in text
    assert b"DejaVu" in data


def test_gp_copy_carries_no_address_and_patient_copy_does():
    letter = _letter(given="Ann", family="Lee")
    gp, patient = pdf_text(render_pdf(letter, "gp", SERVICE)), pdf_text(render_pdf(letter, "patient", SERVICE))
    assert "LS6 2ZZ" not in gp and "LS6 2ZZ" in patient
    assert "999 000 0018" in gp and "Synthetic Practice 1" in gp
    assert "copy it to your GP" in patient


def test_patient_who_declined_is_told_the_gp_was_not_sent_it():
    text = pdf_text(render_pdf(_letter(given="Ann", family="Lee", gp_sharing_consent=False), "patient", SERVICE))
    assert "not sent this letter" in text


def test_discharge_letter_content():
    text = pdf_text(render_pdf(_letter(given="Ann", family="Lee", event="discharge"), "gp", SERVICE))
    for needle in ("Discharge letter", "Attended: 6", "Missed (did not attend): 1", "PHQ-9: first 14, last 5",
                   "Recovery: yes", "Reliable improvement: yes"):
        assert needle in text


def test_parser_ignores_unknown_markup_and_unescapes_text():
    blocks = parse_blocks("<h1>A &amp; B</h1><p>x &lt;y&gt; <b>z</b></p>")
    assert blocks == [("h1", [(False, "A & B")]), ("p", [(False, "x <y> "), (True, "z")])]


def test_font_is_parsed_once_per_process():
    html_to_pdf("<p>Łódź</p>")
    before = pdf._prototype.cache_info().misses
    for _ in range(3):
        html_to_pdf("<p>Łódź again</p>")
    assert pdf._prototype.cache_info().misses == before


@pytest.fixture(scope="module")
def october(synth_source):
    events = find_events(synth_source.engine, dt.date(2026, 10, 1), dt.date(2026, 11, 1))
    return load_letters(synth_source.engine, events)


def test_real_letters_never_carry_session_notes(october):
    assert {lt.event for lt in october} == {"assessment", "discharge"}
    for letter in october[:25]:
        text = pdf_text(render_pdf(letter, "gp", SERVICE))
        assert not any(s[:30] in text for s in SUMMARIES)
        assert letter.patient["given_name"] in text
