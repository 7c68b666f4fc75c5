"""Free text leaving the service is cleaned of characters that can hide or disguise what it says.

A clinical summary is typed by a person and copied between systems; by the time it leaves for a referrer it may
carry a NUL (which truncates the text in C-based readers and some databases), terminal escape sequences, or a
Unicode bidirectional override (U+202A..U+202E, U+2066..U+2069: the "Trojan Source" trick that makes text display in
an order other than the one stored). None of them is ever meant clinically. :func:`clean` removes every control
character except tab and newline (a CR of a CRLF becomes part of that newline), and those bidi controls; it leaves
the letters, punctuation and marks of every script (including the LRM/RLM marks right-to-left text needs).

What was removed is reported as counts only, never the text (invariant 2).
"""

from __future__ import annotations

import re
from collections import Counter

import pandas as pd

#: Bidirectional embedding/override (U+202A..U+202E) and isolate (U+2066..U+2069) controls.
BIDI = re.compile("[\u202a-\u202e\u2066-\u2069]")
#: C0 controls except tab and newline, DEL, and C1 controls.
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean_text(text: str) -> tuple[str, Counter[str]]:
    """``text`` without the characters above, and how many of each kind were removed."""
    counts: Counter[str] = Counter()
    text = text.replace("\r\n", "\n")
    text, n = BIDI.subn("", text)
    counts["bidi_controls"] += n
    text, n = CONTROL.subn("", text)
    counts["control_characters"] += n
    return text, +counts


def clean(rows: pd.DataFrame, column: str = "clinical_summary") -> tuple[pd.DataFrame, dict[str, int]]:
    """``rows`` with ``column`` cleaned (a copy when anything changed), and counts: characters removed by kind and
    how many values changed. Missing values stay missing."""
    if rows.empty or column not in rows:
        return rows, {}
    totals: Counter[str] = Counter()
    cleaned = []
    for value in rows[column].astype(object):
        if isinstance(value, str):
            new, counts = clean_text(value)
            if counts or new != value:
                totals["values_changed"] += 1
            totals.update(counts)
            cleaned.append(new)
        else:
            cleaned.append(value)
    if not totals:
        return rows, {}
    out = rows.copy()
    out[column] = pd.Series(cleaned, index=rows.index, dtype=object)
    return out, dict(totals)


__all__ = ["BIDI", "CONTROL", "clean", "clean_text"]
