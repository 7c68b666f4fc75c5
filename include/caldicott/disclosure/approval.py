"""What a service manager reads before deciding a held disclosure: the approval page's subject and body.

Everything on the page comes from the disclosure register (what ``record_request`` and ``make_package`` wrote),
never from XCom or the run's conf, so the page shows the request and the package that will actually be
released. Airflow renders the body as Markdown: every value that came from outside (the requester's name,
organisation code, reference, purpose, the address, the certificate subject) goes through :func:`md_text`, so a
value cannot hide, reorder or fake a line of the page (issue 14: an organisation code carrying backticks and
``<!--`` made the page read "by outbox" while the request went by SFTP).

The page shows the route in full (channel, the server's host and port or the mailbox, the remote folder, the
certificate's subject and SHA-256 fingerprint), the assigned approvers, and never a patient identifier.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from typing import Any

from caldicott.policy.disclosure import CATEGORY_LABELS, Category, policy_for

#: CommonMark lets any ASCII punctuation character be backslash-escaped, and an escaped one is always literal.
_PUNCTUATION = frozenset(string.punctuation)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]+")

CHANNEL_LABELS = {
    "outbox": "Outbox (encrypted file; a named person sends it by the agreed route)",
    "sftp": "SFTP to the requester's server",
    "smime-email": "S/MIME-encrypted e-mail to the requester's secure mailbox",
}


def md_text(value: Any, limit: int = 300) -> str:
    """``value`` as Markdown text that renders as exactly that text, on one line.

    Control, line-break and bidirectional-override characters become a space (they could start a new block
    or reorder what the reader sees); every ASCII punctuation character is backslash-escaped, so no emphasis,
    code span, link, HTML tag or comment, heading or list can start inside a value. Long values are cut and
    marked, so a value cannot push the rest of the page out of sight.
    """
    text = _CONTROL.sub(" ", str(value if value is not None else "")).strip()
    cut = len(text) > limit
    text = text[:limit]
    out = "".join("\\" + ch if ch in _PUNCTUATION else ch for ch in text)
    return out + (" … (cut)" if cut else "") if out else "(none given)"


def _endpoint_line(route: Mapping[str, Any], endpoint: Mapping[str, Any] | None) -> list[str]:
    channel = str(route.get("channel") or "outbox")
    lines = [f"- **Channel** {md_text(CHANNEL_LABELS.get(channel, channel))}"]
    if channel in ("sftp", "smime-email"):
        ep = endpoint or {}
        server = f"{ep.get('host')}:{ep.get('port')}" if ep.get("host") else "(connection not found: cannot release)"
        what = "SFTP server" if channel == "sftp" else "Mail relay"
        conn = ep.get("connection") or route.get("connection_id")
        lines.append(f"- **{what}** {md_text(server)} (Airflow connection {md_text(conn)})")
        label = "Remote folder" if channel == "sftp" else "Mailbox"
        lines.append(f"- **{label}** {md_text(route.get('recipient_address'))}")
    else:
        lines.append(f"- **Outbox folder** {md_text((endpoint or {}).get('folder'))}")
    # where the data would be processed: the requester's country (the request's ``country``, default GB; the package
    # summary records it and the approval binds it), which the release gateway checks against the adequacy list
    # (caldicott.policy.adequacy); a package recorded before requests stated one shows the documented default
    country = route.get("country") or route.get("requester_country") or "GB (not stated: the documented default)"
    lines.append(f"- **Country** {md_text(country)}")
    lines.append(f"- **Encrypted to certificate** {md_text(route.get('certificate_subject'))}")
    lines.append(f"- **Certificate SHA-256** {md_text(route.get('certificate_sha256'))}")
    return lines


def approval_text(request: Mapping[str, Any], summary: Mapping[str, Any], timeout_minutes: float, *,
                  approvers: Sequence[str], endpoint: Mapping[str, Any] | None = None) -> tuple[str, str]:
    """Subject and Markdown body of the approval page.

    ``request`` and ``summary`` are the register's ``requested`` and ``package_built`` details; ``endpoint`` is
    what the deployment's connection points at now (``host``/``port``, or ``folder`` for the outbox), looked up
    by the Airflow adapter. ``approvers`` are the people who may answer (shown so anyone else knows).
    """
    from caldicott.disclosure.package import legal_basis_text

    pol = policy_for(summary["request_type"])
    did = md_text(summary["disclosure_id"])
    subject = f"Disclosure {summary['disclosure_id']}: {pol.label} — approve or refuse"
    cats = "\n".join(f"- {CATEGORY_LABELS[Category(c)]}: **{int(summary['record_counts'].get(c, 0))}** records"
                     for c in summary["categories"]) or "- (nothing: no category asked for is allowed)"
    withheld = ", ".join(md_text(w) for w in summary["withheld"]) or "none"
    lines = [
        f"**Request** {did} — {md_text(pol.label)}, urgency **{md_text(summary.get('urgency', 'routine'))}**",
        "**Requester**\n\n" + "\n".join([
            f"- **Organisation** {md_text(request.get('requester_organisation'))} "
            f"(code {md_text(request.get('requester_org_code') or 'none')})",
            f"- **Person asking** {md_text(request.get('requester_person'))}",
            f"- **Their reference** {md_text(request.get('reference'))}",
            f"- **How their authority was checked** {md_text(request.get('authority_check'))}",
            f"- **Purpose** {md_text(request.get('purpose'))}",
            f"- **Why disclosure is necessary** {md_text(request.get('necessity'))}",
            f"- **Asked for by** {md_text(request.get('requested_by'))} (Airflow user who filed the request)"]),
        "**Where it would go**\n\n" + "\n".join(_endpoint_line(summary, endpoint)),
        f"**Legal basis claimed** {md_text(legal_basis_text(summary['legal_basis']))}",
        f"**Consent** {md_text(summary.get('consent_status', 'not_sought'))}",
        f"**Date range** {md_text(summary['date_from'])} to {md_text(summary['date_to'])}",
        "**What would be disclosed**\n\n" + cats,
        f"**Withheld (not permitted for this request type)** {withheld}",
    ]
    if summary.get("deidentified"):
        lines.append("**De-identified** pseudonymous ids, age bands, months; no free text")
    if summary.get("ndop") is not None:
        n = summary["ndop"]
        lines.append(f"**National data opt-out** {int(n['opted_out'])} opted out, {int(n['no_valid_nhs_number'])} "
                     f"without an NHS number left out, {int(n['included_patients'])} included")
    lines += ["", f"Package checksum {md_text(summary['package_checksum'][:16])}….",
              f"**Who may decide** {', '.join(md_text(a) for a in approvers)}. An answer from anyone else, or "
              "from the person who asked, is refused and recorded.",
              f"No decision within {timeout_minutes:g} minutes escalates to the Caldicott Guardian and refuses.",
              "To refuse, choose Refuse and give your reasons. Do not type patient identifiers into the form.",
              "After you answer, this page shows who answered and when, and this task turns **Success** once the "
              "decision is in the disclosure register (an approval then releases the package; a refusal writes the "
              "refusal letter), or **Failed** with the reason in its log when it is not a decision (an incomplete "
              "approval, or an answer from someone not allowed): then nothing is sent."]
    return subject, "\n\n".join(lines)
