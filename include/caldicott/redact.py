"""Make text safe for places patient data must never reach: logs, alerts, exception messages, the UI.

Caldicott's own messages carry only opaque ids and counts. But text from elsewhere — a database
driver's error echoing a row, a library quoting a value — can hold anything, so before such text goes
to an alert it passes through :func:`scrub`, which keeps the shape of the message and drops every
value: quoted strings, numbers of three or more digits, dates (numeric or with month names), e-mail
addresses, postcodes and SQL parameter lists. What survives is the error's wording, which is what
on-call staff need.

Names cannot be recognised by their shape, so :func:`scrub` (``names=True``, the default) also replaces
every capitalised or all-capital word that is not known error wording: SQL keywords, acronyms, common
English words of error messages, and exception class names (``...Error``, ``...Exception``). A
lower-case name in foreign text would survive; Caldicott's own messages never hold one.
"""

from __future__ import annotations

import re

_MONTHS = ("jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|"
           "sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?")

_PATTERNS = [
    (re.compile(r"\[parameters:.*?\]", re.S), "[parameters: <redacted>]"),      # SQLAlchemy
    (re.compile(r"(?i)\bvalues\s*\(.*?\)", re.S), "VALUES (<redacted>)"),
    (re.compile(r"(?i)\bdetail:.*", re.S), "DETAIL: <redacted>"),                 # PostgreSQL echoes keys
    (re.compile(r"'(?:[^'\\]|\\.)*'"), "'<redacted>'"),
    (re.compile(r'"(?:[^"\\]|\\.)*"'), '"<redacted>"'),
    (re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"), "<email>"),
    (re.compile(r"\b[A-Z]{1,2}[0-9][A-Z0-9]? ?[0-9][A-Z]{2}\b", re.I), "<postcode>"),
    (re.compile(r"\b\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}(?:[T ]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?\b"), "<date>"),
    (re.compile(rf"(?i)\b(?:\d{{1,2}}(?:st|nd|rd|th)?\s+(?:{_MONTHS})\.?,?\s+\d{{2,4}}"
                rf"|(?:{_MONTHS})\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{2,4}})\b"), "<date>"),
    (re.compile(r"\d[\d -]{2,}\d|\d{3,}"), "<number>"),
]

# Capitalised words that are error wording, not names. Deliberately small: a word here is let through
# even where it might be someone's name, so plausible names (Grace, Hall, Green, Will, ...) stay out.
_WORDING_TEXT = """
a an and are as at be because but by can cannot could did does during expected failed for found from
got had has have if in into invalid is it its may missing must no none not null of on or out permission
please refused retry should table that the then there this timed timeout to too try unable unexpected
unknown was were when which while with without would connection error exception could server database
column constraint key value values duplicate unique violates relation does exist access denied file
directory read write task dag run process killed terminated operation syntax near row rows record
records query transaction connect closed reset broken pipe host port name resolution temporary lost
all any each some only more than less after before again already empty request response status
message send sent receive received mailbox certificate expired verify failure handshake ssl tls
check checks missing required field fields type types schema column columns index batch letter
letters update updates submission disclosure ledger quarantine gateway purpose policy
"""
_WORDING = frozenset(_WORDING_TEXT.split())

_KEEP_SUFFIXES = ("Error", "Exception", "Warning", "Exit", "Interrupt", "Timeout", "Refused", "Reset",
                  "Denied", "NotFound", "Failure", "Fault", "Violation")

_WORD = re.compile(r"(?<![\w])([^\W\d_][^\W\d_]*(?:['\u2019-][^\W\d_]+)*)(?![\w>])")


def _name_or_word(m: re.Match[str]) -> str:
    word = m.group(1)
    if not any(c.isupper() for c in word):
        return word                                          # ordinary lower-case wording
    if word.lower() in _WORDING:
        return word
    if word.isupper() and word.lower() in _ACRONYMS:
        return word
    if word.endswith(_KEEP_SUFFIXES) and len(word) > 6 and "'" not in word:
        return word                                          # IntegrityError, ConnectionRefused...
    return "<name>"


_ACRONYMS_TEXT = """
sql http https smtp mesh tls ssl nhs api url uri id ids dns tcp ip json xml csv pdf dag xcom ndop iapt
select insert update delete from where into values null not unique key primary foreign constraint
table index on and or in is set begin commit rollback returning join create drop alter ok utf ascii
s3 sftp ssh gp fhir itk cms smime rsa aes detail hint
"""
_ACRONYMS = frozenset(_ACRONYMS_TEXT.split())


def scrub_names(text: str) -> str:
    """``text`` with every capitalised word that is not error wording replaced by ``<name>``."""
    return _WORD.sub(_name_or_word, text)


def scrub(text: str, limit: int = 300, *, names: bool = True) -> str:
    """``text`` with every value (and, unless ``names=False``, every possible name) replaced by a
    placeholder, cut to ``limit`` characters."""
    out = text or ""
    for pattern, repl in _PATTERNS:
        out = pattern.sub(repl, out)
    if names:
        out = scrub_names(out)
    out = " ".join(out.split())
    return out if len(out) <= limit else out[: limit - 1] + "…"
