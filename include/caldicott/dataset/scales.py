"""The coded assessment scales NHS England accepts in IDS606/IDS607, each with its own score format and range.

The one source of score ranges for the data set rules: ``iapt_assessment_scales.tsv`` beside this module, copied from
NHS England's receiving side (``assessment_scales.py``), 35 SNOMED CT items. Each item is scored either in a range
(``lo..hi``, the score read as a number: MI items are decimals, ``0..5`` with one or two decimal places) or from a
set (``in {Y,N}``, ``in {NA,Y,N}``: the A-PEQ and IPCQ yes/no items), and has a format (a regex) of its own: WSAS
item 932621000000100 allows 0-9 where the other WSAS items allow 0-8.

The receiving side's semantics, reproduced exactly (``person_score_validations.py``):

* a null score, a null code or a code that is not one of these items passes both checks (the code is checked by
  IDS60613/IDS60710, the blank score by IDS60605/IDS60705);
* :func:`format_ok` (IDS60615/IDS60711, reject record): ``re.match`` of the item's format;
* :func:`in_range` (IDS60607/IDS60707, warning): a range item takes ``float(score)`` within ``lo..hi`` inclusive
  (a score that is not a number is out of range); a set item takes exact membership.

``caldicott.records.schema.SCORE_RANGES`` (PHQ-9, GAD-7, WSAS for the clinical records' own checks and letters)
is a different, older list; the data set does not use it.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

SCALES_PATH = Path(__file__).with_name("iapt_assessment_scales.tsv")


@dataclass(frozen=True)
class Scale:
    """One assessment item: SNOMED CT code, tool, the permitted range or set, and the score's format."""

    snomed_code: str
    tool: str
    lo: float | None
    hi: float | None
    allowed: frozenset[str] | None
    format: str

    def format_ok(self, score: str) -> bool:
        return re.match(self.format, score) is not None

    def in_range(self, score: str) -> bool:
        if self.allowed is not None:
            return score in self.allowed
        try:
            value = float(score)
        except (TypeError, ValueError):
            return False
        return not math.isnan(value) and self.lo <= value <= self.hi   # type: ignore[operator]


def _parse(code: str, tool: str, permitted: str, fmt: str) -> Scale:
    permitted = permitted.strip()
    if permitted.startswith("in {") and permitted.endswith("}"):
        allowed = frozenset(v.strip() for v in permitted[4:-1].split(",") if v.strip())
        return Scale(code, tool, None, None, allowed, fmt)
    lo, _, hi = permitted.partition("..")
    return Scale(code, tool, float(lo), float(hi), None, fmt)


@cache
def scales() -> dict[str, Scale]:
    """SNOMED CT code -> :class:`Scale`, for every item NHS England accepts."""
    with SCALES_PATH.open(newline="") as fh:
        rows = csv.DictReader((line for line in fh if not line.startswith("#")), delimiter="\t")
        return {r["snomed_code"]: _parse(r["snomed_code"], r["tool"], r["permitted"], r["format"]) for r in rows}


def codes() -> frozenset[str]:
    """The SNOMED CT codes of the accepted items (IDS60613/IDS60710)."""
    return frozenset(scales())


def format_ok(snomed_code: str | None, score: str | None) -> bool:
    """IDS60615/IDS60711: the score is in its item's format (null, or an unknown item: passes)."""
    scale = scales().get(snomed_code) if snomed_code is not None else None
    return score is None or scale is None or scale.format_ok(score)


def in_range(snomed_code: str | None, score: str | None) -> bool:
    """IDS60607/IDS60707: the score is one its item permits (null, or an unknown item: passes)."""
    scale = scales().get(snomed_code) if snomed_code is not None else None
    return score is None or scale is None or scale.in_range(score)
