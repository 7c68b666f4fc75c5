"""Displays for the coded values on a transfer report (OnwardReferReason, therapy type, digital programme).

A data file (:data:`DEFAULT_FILE`, format in its header; the deployment's own with ``CALDICOTT_TRANSFER_CODES``),
not code, so a service can add the NHS Data Dictionary's displays without a release. A code with no display prints
as the code set's name and the code, never a guess.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

DEFAULT_FILE = Path(__file__).resolve().parent / "codes.tsv"
FILE_SETTING = "CALDICOTT_TRANSFER_CODES"
LABELS = {"onward_refer_reason": "Onward referral reason (NHS Data Dictionary)",
          "therapy_type": "Therapy type", "digital_programme": "Internet-enabled therapy programme"}


@functools.lru_cache(maxsize=4)
def _load(path: str, mtime_ns: int) -> dict[tuple[str, str], str]:
    out: dict[tuple[str, str], str] = {}
    for raw in Path(path).read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].rstrip()
        parts = [p.strip() for p in line.split("\t")]
        if len(parts) >= 3 and parts[0] and parts[1] and parts[2]:
            out[(parts[0], parts[1])] = parts[2]
    return out


def table() -> dict[tuple[str, str], str]:
    path = Path(os.environ.get(FILE_SETTING, "").strip() or DEFAULT_FILE)
    return _load(str(path), path.stat().st_mtime_ns)


def display(code_set: str, code: object) -> str:
    """``code``'s display in ``code_set``, or '<label> code NN' when none is configured; 'not recorded' if blank."""
    value = "" if code is None else str(code).strip()
    if not value:
        return "not recorded"
    shown = table().get((code_set, value))
    return f"{shown} ({value})" if shown else f"{LABELS.get(code_set, code_set)} code {value}"
