"""The release decision: whether one outbound item may leave, and if not, why (invariant 1).

The one release gateway (:func:`caldicott.gateway.release`) asks :func:`check` about every item before it
claims it in the ledger; this module decides, the gateway delivers. :func:`check` sends nothing and writes
nothing: it reads the purpose's rule (:mod:`caldicott.policy.purposes`), the adequacy list
(:mod:`caldicott.policy.adequacy`) and, for non-routine purposes, the disclosure register.

Routine purposes pass when each fact their rule requires is established for exactly these bytes (an
:class:`~caldicott.policy.evidence.Evidence` minted by the code that owns the fact, whose checksum is the
item's; a bare ``True`` typed in by a caller is not evidence), the protection is one the rule allows and,
where the rule names them, the recipient is one it allows and the address is the one the deployment
configured (the NDOP check: NHS England's opt-out service mailbox, ``CALDICOTT_NDOP_MAILBOX``); every other
purpose passes only with an approved entry in the disclosure register for exactly this recipient, at the
address the approver saw, and exactly these bytes (checksum).
"""

from __future__ import annotations

from sqlalchemy import Engine

from caldicott.disclosure.register import approved_release
from caldicott.policy import adequacy
from caldicott.policy.evidence import Evidence
from caldicott.policy.purposes import Protection, Purpose, configured_address, release_rule
from caldicott.transport.base import Outbound, Sender


def _established(item: Outbound, fact: str) -> bool:
    """Whether ``item`` carries evidence, minted by the code that owns ``fact``, for exactly its bytes."""
    ev: object = item.facts.get(fact)
    return isinstance(ev, Evidence) and ev.fact == fact and ev.checksum == item.checksum


class ReleaseRefused(Exception):
    """An item failed its purpose's release rule. The message names the rule, never patient data."""


def check(item: Outbound, state_engine: Engine, sender: Sender | None = None) -> None:
    """Raise ReleaseRefused unless ``item`` may leave for its purpose. Pure policy; sends nothing.

    ``sender``: the route it would take, whose declared country (the next hop) is checked with the item's own."""
    try:
        rule = release_rule(item.purpose)
    except (KeyError, ValueError) as exc:
        raise ReleaseRefused(f"unknown purpose {item.purpose!r}") from exc
    if item.protection == Protection.NONE or item.protection not in rule.allowed_protection:
        raise ReleaseRefused(f"protection {item.protection!s} not allowed for {item.purpose!s}")
    if not item.payload:
        raise ReleaseRefused("empty payload")
    # privacy notice: no transfer to a country not assessed as adequate (UK GDPR Art. 45); fail closed on unknown
    if (where := adequacy.refusal(item, sender)) is not None:
        raise ReleaseRefused(where)
    missing = [f for f in rule.required_facts if not _established(item, f)]
    if missing:
        raise ReleaseRefused(f"{item.purpose!s} requires {', '.join(missing)} (not established for these bytes)")
    if rule.recipients is not None and item.recipient not in rule.recipients:
        raise ReleaseRefused(f"recipient is not one {item.purpose!s} may go to")
    if rule.address_setting is not None:   # the address comes from the deployment, never from the flow alone
        allowed = configured_address(rule)
        if allowed is None:
            raise ReleaseRefused(f"{item.purpose!s} needs {rule.address_setting} configured")
        if (item.address or "") != allowed:
            raise ReleaseRefused(f"address is not the configured {rule.address_setting}")
    if not rule.routine or item.purpose == Purpose.DISCLOSURE:
        approval = approved_release(state_engine, item.disclosure_id)
        if approval is None:
            raise ReleaseRefused("non-routine release without an approved disclosure register entry")
        if approval.recipient != item.recipient:
            raise ReleaseRefused("recipient differs from the approved disclosure")
        if approval.address != (item.address or ""):
            raise ReleaseRefused("address differs from the approved disclosure")
        if approval.package_checksum != item.checksum:
            raise ReleaseRefused("package differs from the one approved")
