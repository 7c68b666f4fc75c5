"""Why data leaves the service: the purposes, which are routine, and what each must prove.

This is the policy module's spine (docs/architecture.md: one policy module). The release gateway asks
:func:`release_rule` for every outbound item; a purpose that is not routine can only leave with an
approved entry in the disclosure register. Field lists (minimum necessary) and opt-out rules per flow
live beside this file in ``policy/``, one module per flow, so the whole matrix is read in one folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import StrEnum


class Purpose(StrEnum):
    """Every reason Caldicott may send bytes out of the service."""

    GP_LETTER = "gp_letter"                  # direct care: assessment / discharge letter to the registered GP
    PATIENT_COPY = "patient_copy"            # the patient's own copy of their letter
    REFERRER_UPDATE = "referrer_update"      # direct care / contract: sessions to the referrer's PAS
    MANDATED_DATASET = "mandated_dataset"    # required by law (DPN, s259(5) HSCA 2012): IAPT monthly data set
    NDOP_CHECK = "ndop_check"                # NHS numbers to NHS England's opt-out service, to apply the opt-out
    PLANNING_EXTRACT = "planning_extract"    # commissioner / local planning extract under a sharing agreement
    TRANSFER_OF_CARE = "transfer_of_care"    # direct care: patient report to the provider taking the patient on
    DISCLOSURE = "disclosure"                # anything else: court, police, safeguarding, DWP, research...


class Protection(StrEnum):
    """How the bytes are protected on their way; ``NONE`` is never allowed to leave."""

    SMIME = "smime"                  # S/MIME EnvelopedData to the recipient's certificate
    CMS = "cms"                      # CMS-encrypted file to the recipient's certificate
    SECURE_GATEWAY = "secure-gateway"  # NHSmail encrypts to non-NHSmail addresses when the subject has [secure]
    MESH = "mesh"                    # MESH: mutual TLS inside NHS infrastructure, mailbox to mailbox
    SFTP = "sftp"                    # SSH transport to a host whose key is pinned
    STAGED_ENCRYPTED = "staged-encrypted"  # encrypted at rest, for a named person to upload by hand
    NONE = "none"


@dataclass(frozen=True)
class ReleaseRule:
    """What the gateway requires of an outbound item for a purpose."""

    routine: bool
    allowed_protection: frozenset[Protection]
    #: facts the owning code must establish for exactly the item's bytes (caldicott.policy.evidence), e.g. consent
    required_facts: tuple[str, ...] = ()
    why: str = ""
    #: the only recipients (opaque ids) this purpose may go to; None: any the flow names
    recipients: frozenset[str] | None = None
    #: the deployment setting (environment variable) holding the only address this purpose may go to; None: any.
    #: Read at release time by the gateway, not taken from the item, so a flow cannot choose where it goes.
    address_setting: str | None = None
    #: the country an item of this purpose reaches when it declares none (caldicott.policy.adequacy): "GB" where the
    #: recipients are, by law or by their NHS role, in the UK, and for configured recipients whose configuration
    #: states no country (the documented default); None: the item must declare its recipient's country or it is
    #: refused (fail closed)
    domestic: str | None = "GB"


#: Opaque recipient id of NHS England's "Check for national data opt-outs" service (MESH).
NDOP_SERVICE = "nhs-england-ndop"
#: Where the deployment names that service's MESH mailbox (it differs by environment).
NDOP_MAILBOX_SETTING = "CALDICOTT_NDOP_MAILBOX"


_RULES: dict[Purpose, ReleaseRule] = {
    Purpose.GP_LETTER: ReleaseRule(
        True, frozenset({Protection.SMIME, Protection.MESH}), ("gp_sharing_consent",),
        "direct care; the patient did not decline GP sharing at registration"),
    Purpose.PATIENT_COPY: ReleaseRule(
        True, frozenset({Protection.SMIME, Protection.SECURE_GATEWAY, Protection.SFTP, Protection.STAGED_ENCRYPTED}),
        (), "the patient's own information, copied to them ('no surprises'); posted copies go to the "
            "print-and-post batch, encrypted at rest"),
    Purpose.REFERRER_UPDATE: ReleaseRule(
        True, frozenset({Protection.SFTP, Protection.MESH, Protection.CMS}), ("contract_fields_applied",),
        "direct care / contract: only the fields the referrer's contract allows"),
    Purpose.MANDATED_DATASET: ReleaseRule(
        True, frozenset({Protection.STAGED_ENCRYPTED, Protection.MESH, Protection.SFTP}), ("validated",),
        "required by law (Data Provision Notice, s259(5) Health and Social Care Act 2012)"),
    Purpose.NDOP_CHECK: ReleaseRule(
        True, frozenset({Protection.MESH}), ("nhs_numbers_only",),
        "NHS numbers only (the fact is established from the bytes by caldicott.policy.ndop.request_facts), "
        "to NHS England's opt-out service at the configured mailbox and nowhere else, to apply the opt-out",
        recipients=frozenset({NDOP_SERVICE}), address_setting=NDOP_MAILBOX_SETTING),
    Purpose.PLANNING_EXTRACT: ReleaseRule(
        True, frozenset({Protection.MESH, Protection.SFTP, Protection.CMS, Protection.STAGED_ENCRYPTED}),
        ("ndop_applied",),
        "planning under a sharing agreement; the national data opt-out has been applied"),
    Purpose.TRANSFER_OF_CARE: ReleaseRule(
        True, frozenset({Protection.MESH, Protection.SMIME, Protection.CMS}), ("transfer_fields_applied",),
        "direct care: the patient's care moves to another provider, who gets a patient report with only the fields "
        "caldicott.policy.transfers allows (privacy notice: 'we provide them with a patient report'); the "
        "receiver's country must be declared and on the adequacy list", domestic=None),
    Purpose.DISCLOSURE: ReleaseRule(
        False, frozenset({Protection.SMIME, Protection.CMS, Protection.SFTP}), (),
        "non-routine: only with an approved entry in the disclosure register"),
}


def release_rule(purpose: Purpose) -> ReleaseRule:
    """The rule for ``purpose``; an unknown purpose has none and so cannot leave."""
    return _RULES[Purpose(purpose)]


def configured_address(rule: ReleaseRule) -> str | None:
    """The one address ``rule`` allows, from the deployment's configuration; None when unset (then nothing may go)."""
    if rule.address_setting is None:
        return None
    return os.environ.get(rule.address_setting, "").strip() or None
