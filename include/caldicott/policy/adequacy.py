"""Where data may go: the deployment's adequacy list, and the release gateway's country check.

The privacy notice promises: "we seek where possible to prevent any transfers of your personal information to
countries which have not been assessed as having adequate data protection standards". UK GDPR Art. 44-45 (and DPA
2018 s17A) let a restricted transfer rest on UK adequacy regulations; everything else needs safeguards a person has
put in place, which is not something a scheduled flow can establish. So the gateway releases an item only when every
country it would reach — the recipient's, and each intermediary's that carries it (the NHSmail relay, MESH, a print
house) — is on the adequacy list (:data:`DEFAULT_FILE`, cited at its top; a deployment names its own with
``CALDICOTT_ADEQUACY_FILE``).

How an item says where it goes: ``Outbound.headers["country"]`` is the recipient's ISO 3166-1 alpha-2 country (from
the records source: ``organisation.country``, ``gp_practice.country``; or from the recipient's configuration: print
house, disclosure requester, intermediary, default ``GB``), ``headers["via_country"]`` the intermediaries' countries,
comma-separated. A sender may declare its own ``country`` attribute (the next hop), which is checked too.

Fail closed: a declared country that is blank, malformed or not listed is refused; an item that declares none is
refused unless its purpose's rule names the country its recipients are in by law or by their NHS role
(:attr:`caldicott.policy.purposes.ReleaseRule.domestic`, e.g. NHS England for the mandated data set). A missing or
unreadable list file refuses everything (an empty list allows nothing).
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from caldicott.policy.purposes import release_rule

if TYPE_CHECKING:
    from caldicott.transport.base import Outbound, Sender

#: The shipped list: the UK, the EEA and the other countries under full UK adequacy regulations (sources in the file).
DEFAULT_FILE = Path(__file__).resolve().parent / "adequacy_countries.tsv"
#: Deployment setting: the path of the service's own list (same format); unset, the shipped one.
FILE_SETTING = "CALDICOTT_ADEQUACY_FILE"
COUNTRY_HEADER = "country"
VIA_HEADER = "via_country"
_CODE = re.compile(r"[A-Z]{2}")


class AdequacyListError(ValueError):
    """The adequacy list cannot be read. Raised to no one: :func:`refusal` turns it into a refusal."""


def list_path() -> Path:
    """The list in force: the deployment's file if ``CALDICOTT_ADEQUACY_FILE`` is set, else the shipped one."""
    configured = os.environ.get(FILE_SETTING, "").strip()
    return Path(configured) if configured else DEFAULT_FILE


def parse(text: str) -> frozenset[str]:
    """Country codes from a list file: the first tab-separated field of each line that is not a comment."""
    codes: set[str] = set()
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        code = line.split("\t", 1)[0].strip().upper()
        if not _CODE.fullmatch(code):
            raise AdequacyListError(f"line {n}: {code!r} is not an ISO 3166-1 alpha-2 code")
        codes.add(code)
    return frozenset(codes)


@functools.lru_cache(maxsize=8)
def _load(path: str, mtime_ns: int) -> frozenset[str]:
    return parse(Path(path).read_text(encoding="utf-8"))


def adequate_countries(path: Path | None = None) -> frozenset[str]:
    """The countries a release may go to, read from the list in force (re-read when the file changes: a new list
    takes effect without a restart or a code change)."""
    p = path or list_path()
    try:
        return _load(str(p), p.stat().st_mtime_ns)
    except OSError as exc:
        raise AdequacyListError(f"adequacy list {p} cannot be read ({type(exc).__name__})") from exc


def normalise(country: object) -> str:
    """An ISO alpha-2 code in capitals, or '' when blank or not a code (then refused)."""
    code = str(country or "").strip().upper()
    return code if _CODE.fullmatch(code) else ""


def destinations(item: Outbound, sender: Sender | None = None) -> list[str]:
    """Every country ``item`` would reach, as declared (recipient, intermediaries, the sender's next hop);
    malformed or blank declarations kept as '' so they are refused, not skipped."""
    headers = getattr(item, "headers", None) or {}
    out: list[str] = []
    if COUNTRY_HEADER in headers:
        out.append(normalise(headers[COUNTRY_HEADER]))
    if headers.get(VIA_HEADER) is not None:
        out += [normalise(c) for c in str(headers[VIA_HEADER]).split(",")]
    hop = getattr(sender, "country", None) if sender is not None else None
    if hop is not None:
        out.append(normalise(hop))
    return out


def refusal(item: Outbound, sender: Sender | None = None) -> str | None:
    """Why ``item`` may not go where it would go, or None. The reason names the rule and country codes, never data."""
    countries = destinations(item, sender)
    if not countries:
        try:
            domestic = release_rule(item.purpose).domestic
        except (KeyError, ValueError):
            domestic = None
        if not domestic:
            return "adequacy: recipient country unknown (not declared)"
        countries = [domestic]
    if "" in countries:
        return "adequacy: recipient country unknown (blank or not an ISO 3166-1 code)"
    try:
        allowed = adequate_countries()
    except AdequacyListError as exc:
        return f"adequacy: {exc}"
    outside = sorted({c for c in countries if c not in allowed})
    if outside:
        return f"adequacy: {', '.join(outside)} not on the adequacy list ({list_path().name})"
    return None
