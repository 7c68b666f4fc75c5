"""Make text safe for places patient data must never reach: logs, alerts, exception messages, the UI.

Caldicott's own messages carry only opaque ids and counts. But text from elsewhere — a database
driver's error echoing a row, a library quoting a value — can hold anything, so before such text goes
to an alert it passes through :func:`scrub`, which keeps the shape of the message and drops every
value: quoted strings, numbers of three or more digits, dates, e-mail addresses, postcodes and SQL
parameter lists. What survives is the error's wording, which is what on-call staff need.
"""

from __future__ import annotations

import re

_PATTERNS = [
    (re.compile(r"\[parameters:.*?\]", re.S), "[parameters: <redacted>]"),      # SQLAlchemy
    (re.compile(r"(?i)\bvalues\s*\(.*?\)", re.S), "VALUES (<redacted>)"),
    (re.compile(r"(?i)\bdetail:.*", re.S), "DETAIL: <redacted>"),                 # PostgreSQL echoes keys
    (re.compile(r"'(?:[^'\\]|\\.)*'"), "'<redacted>'"),
    (re.compile(r'"(?:[^"\\]|\\.)*"'), '"<redacted>"'),
    (re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"), "<email>"),
    (re.compile(r"\b[A-Z]{1,2}[0-9][A-Z0-9]? ?[0-9][A-Z]{2}\b", re.I), "<postcode>"),
    (re.compile(r"\b\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}\b"), "<date>"),
    (re.compile(r"\d[\d -]{2,}\d|\d{3,}"), "<number>"),
]


def scrub(text: str, limit: int = 300) -> str:
    """``text`` with every value replaced by a placeholder, cut to ``limit`` characters."""
    out = text or ""
    for pattern, repl in _PATTERNS:
        out = pattern.sub(repl, out)
    out = " ".join(out.split())
    return out if len(out) <= limit else out[: limit - 1] + "…"
