"""The national data opt-out (NDOP) as policy: where it applies, how long an answer may be kept, what may be sent.

NHS England's "Check for national data opt-outs" service answers a ``.dat`` file of NHS numbers, one per line,
each followed by a comma, LF line endings, with the same list minus those who opted out (within about an hour).
One invalid NHS number fails the whole file, so only valid numbers are ever sent. Opt-out status may be kept
only for a limited time and never on the patient's record.

The pieces, each in the module named for it:

* here — the policy: the cache lifetime (:data:`DEFAULT_TTL`), where the opt-out is applied
  (:func:`where_applied`), the request format and the fact the release gateway requires of it
  (:func:`request_bytes`, :func:`request_facts`), the reusable filter (:func:`filter_opted_out`);
* :mod:`caldicott.policy.ndop_cache` — the time-limited cache, keyed with HMAC-SHA256 under the deployment's
  secret (Airflow connection ``caldicott_ndop_cache_key``), the sealed outstanding requests, and the purge;
* :mod:`caldicott.policy.ndop_check` — :class:`~caldicott.policy.ndop_check.NdopChecker`: asks NHS England
  for what the cache does not cover, through the release gateway (purpose ``ndop_check``, one ledger item per
  request file), and turns the reply into cached answers;
* :mod:`caldicott.transport.ndop_mesh` — the request and reply over MESH (workflow ``SPINE_NTT_UPHOLDING``).

Use::

    from caldicott.policy.ndop import filter_opted_out
    from caldicott.policy.ndop_check import NdopChecker
    checker = NdopChecker(state_engine, key, transport)     # key: bytes from the secrets backend
    checker.send(nhs_numbers, request_id)                   # asks for what the cache does not cover
    checker.collect(request_id)                             # True once the reply is cached
    status = checker.status(nhs_numbers)
    if status.complete: kept = filter_opted_out(frame, "nhs_number", status.opted_out)
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TypedDict

import pandas as pd

from caldicott.policy.evidence import Evidence, establish

#: How long an answer is kept before the number must be asked again.
DEFAULT_TTL = dt.timedelta(days=7)
#: A request with no reply after this long is abandoned by the purge: its sealed copy is erased, and the numbers
#: it asked about are asked again by the next check.
STALE_REQUEST = dt.timedelta(days=7)

_REQUEST_LINE = re.compile(rb"\d{10},")


class NdopError(Exception):
    """The check failed (invalid request, no reply yet, rejected file). Messages hold counts, never NHS numbers."""


class NdopKeyMissing(NdopError):
    """No usable cache key: the check refuses to run (it would otherwise key the cache guessably)."""


class NdopRefused(NdopError):
    """The release gateway refused the request file (wrong recipient, mailbox not configured...): needs a person."""


def where_applied() -> dict[str, bool]:
    """Every output the opt-out is considered for, and whether it is applied there.

    One view over the flows' own policy modules, which decide it: the monthly data set (``policy/dataset.py``:
    not applied to the mandated submission, which is required by law; applied to the commissioner / planning
    extract) and the disclosure request types (``policy/disclosure.py``, ``ndop_applies``: research). Direct care
    (letters, referrer updates) is outside its scope and not listed.
    """
    from caldicott.policy import dataset, disclosure

    out = {f"monthly_dataset.{dataset.RULES[rule]['output']}": applied
           for rule, applied in (("ndop_not_applied_required_by_law", False), ("ndop_applied", True))}
    out.update({f"disclosure.{kind}": p.ndop_applies for kind, p in disclosure.POLICIES.items()})
    return out


def request_bytes(numbers: Iterable[str]) -> bytes:
    """The ``.dat`` request: unique numbers, sorted, ``NNNNNNNNNN,`` per line, LF endings.

    Raises NdopError if any number is not a valid NHS number (one bad number fails the whole file).
    """
    from caldicott.dataset.rules import nhs_invalid  # vectorised check shared with the data set rules

    s = pd.Series(sorted({str(n) for n in numbers}), dtype="string[pyarrow]")
    if s.empty:
        raise NdopError("an opt-out request needs at least one NHS number")
    shaped = s.str.fullmatch(r"\d{10}").fillna(False).to_numpy(dtype=bool)   # blanks are not "invalid" to the rule
    bad = nhs_invalid(s) | ~shaped
    if bad.any():
        raise NdopError(f"{int(bad.sum())} invalid NHS number(s) in an opt-out request; not sent")
    return "".join(f"{n},\n" for n in s.tolist()).encode("ascii")


def request_facts(payload: bytes) -> dict[str, Evidence]:
    """The facts the release gateway requires of an NDOP request, established from the bytes themselves.

    ``nhs_numbers_only``: every line is one valid NHS number and a comma, LF endings, nothing else — so the
    purpose ``ndop_check`` cannot carry anything but the numbers to be checked. Its evidence is minted for exactly
    ``payload`` and only when this holds (otherwise the mapping is empty and the gateway refuses the item).
    """
    lines = payload.split(b"\n")
    ok = bool(payload) and payload.endswith(b"\n") and b"\r" not in payload
    ok = ok and all(_REQUEST_LINE.fullmatch(line) for line in lines[:-1])
    if ok:
        try:
            ok = request_bytes(line[:-1].decode() for line in lines[:-1]) == payload
        except NdopError:
            ok = False
    return {"nhs_numbers_only": establish("nhs_numbers_only", payload)} if ok else {}


def parse_reply(payload: bytes) -> set[str]:
    """NHS numbers in a reply file (same format as the request)."""
    text = payload.decode("ascii").replace("\r\n", "\n")
    return {line.rstrip(",").strip() for line in text.split("\n") if line.strip().rstrip(",")}


def opted_out_from(request: bytes, reply: bytes) -> set[str]:
    """Those sent and not returned: the patients who opted out."""
    return parse_reply(request) - parse_reply(reply)


def filter_opted_out(frame: pd.DataFrame, nhs_column: str, opted_out: set[str]) -> pd.DataFrame:
    """``frame`` without the rows whose NHS number opted out (rows without a number are kept by the caller's
    choice: pass them through ``drop_unchecked``)."""
    if not opted_out:
        return frame
    # in Arrow: pandas' isin on arrow strings is a Python loop
    from caldicott.dataset.builder import isin

    return frame.loc[~isin(frame[nhs_column], opted_out)]


class NdopCounts(TypedDict):
    """A check's counts (:meth:`NdopStatus.counts`): no numbers, only how many."""

    opted_out: int
    pending: int
    from_cache: int
    sent: int


@dataclass
class NdopStatus:
    """Result of a check: the opted-out numbers among those asked, and whether every number is known."""

    opted_out: set[str] = field(default_factory=set)
    pending: int = 0            # numbers still awaiting a reply
    from_cache: int = 0
    sent: int = 0               # numbers in request files that left in this call
    request_id: str | None = None

    @property
    def complete(self) -> bool:
        return self.pending == 0

    def counts(self) -> NdopCounts:
        return {"opted_out": len(self.opted_out), "pending": self.pending, "from_cache": self.from_cache,
                "sent": self.sent}
