"""Evidence of a release fact, minted by the code that establishes it, for exactly the bytes it vouches for.

A purpose's rule (:mod:`caldicott.policy.purposes`) names the facts an item must carry (``validated``,
``ndop_applied``, ``contract_fields_applied``, ``gp_sharing_consent`` ...). A caller cannot just type one in:
the gateway (:func:`caldicott.policy.release.check`) accepts only an :class:`Evidence` for that fact whose checksum
is the SHA-256 of the item's payload, so evidence established for other bytes (or a bare ``True``) is refused.
Each owning module calls :func:`establish` at the point where it has actually established the fact.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Evidence:
    """That ``fact`` holds for the payload whose SHA-256 is ``checksum`` (hex). Carries no patient data."""

    fact: str
    checksum: str


def checksum(payload: bytes) -> str:
    """The SHA-256 (hex) of ``payload``: the same digest :attr:`caldicott.transport.base.Outbound.checksum` uses."""
    return hashlib.sha256(payload).hexdigest()


def establish(fact: str, payload: bytes) -> Evidence:
    """Evidence that ``fact`` holds for exactly ``payload``; call it only where the fact has been established."""
    return Evidence(fact, checksum(payload))
