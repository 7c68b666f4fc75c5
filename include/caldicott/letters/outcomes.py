"""Outcome arithmetic for discharge letters, with the national programme's definitions (docs/gp_letters.md).

* caseness: PHQ-9 >= 10 **or** GAD-7 >= 8;
* recovery: at caseness at the first measure and below **both** thresholds at the last;
* reliable improvement: PHQ-9 down by >= 6 **or** GAD-7 down by >= 4, and **neither** up by that much.
"""

from __future__ import annotations

PHQ9_CASENESS, GAD7_CASENESS = 10, 8
PHQ9_RELIABLE, GAD7_RELIABLE = 6, 4

END_REASONS = {
    "10": "not suitable for the service: no action taken",
    "11": "signposted elsewhere with mutual agreement of the patient",
    "12": "discharged by mutual agreement following advice and support",
    "13": "referred to another therapy service by mutual agreement",
    "14": "suitable for the service, but the patient declined treatment",
    "16": "incomplete assessment (patient dropped out)",
    "17": "deceased (seen but not taken on for a course of treatment)",
    "46": "mutually agreed completion of treatment",
    "47": "termination of treatment earlier than the care professional planned",
    "48": "termination of treatment earlier than the patient requested",
}


def caseness(phq9: int | None, gad7: int | None) -> bool | None:
    if phq9 is None or gad7 is None:
        return None
    return phq9 >= PHQ9_CASENESS or gad7 >= GAD7_CASENESS


def recovered(phq_first: int | None, gad_first: int | None, phq_last: int | None, gad_last: int | None) -> bool | None:
    """None when not applicable (not at caseness at the start) or not measurable (missing pairs)."""
    start = caseness(phq_first, gad_first)
    end = caseness(phq_last, gad_last)
    if start is None or end is None or not start:
        return None
    return not end


def reliably_improved(phq_first: int | None, gad_first: int | None, phq_last: int | None,
                      gad_last: int | None) -> bool | None:
    if phq_first is None or gad_first is None or phq_last is None or gad_last is None:
        return None
    d_phq, d_gad = phq_last - phq_first, gad_last - gad_first
    down = d_phq <= -PHQ9_RELIABLE or d_gad <= -GAD7_RELIABLE
    up = d_phq >= PHQ9_RELIABLE or d_gad >= GAD7_RELIABLE
    return down and not up


def recovery_text(phq_first: int | None, gad_first: int | None, phq_last: int | None, gad_last: int | None) -> str:
    if None in (phq_first, gad_first, phq_last, gad_last):
        return "not measurable (fewer than two paired PHQ-9 and GAD-7 scores)"
    if not caseness(phq_first, gad_first):
        return "not applicable (below clinical thresholds at the start)"
    return "yes: moved to recovery" if recovered(phq_first, gad_first, phq_last, gad_last) else "no"


def reliable_text(phq_first: int | None, gad_first: int | None, phq_last: int | None, gad_last: int | None) -> str:
    r = reliably_improved(phq_first, gad_first, phq_last, gad_last)
    if r is None:
        return "not measurable (fewer than two paired PHQ-9 and GAD-7 scores)"
    return "yes" if r else "no"
