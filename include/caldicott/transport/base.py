"""The one interface every transport implements (MESH, SMTP, SFTP, staging), and the outbound item.

Flows never call a transport directly: they build :class:`Outbound` items and hand them to the release
gateway (:mod:`caldicott.gateway`) with a :class:`Sender`. A sender knows how to move bytes; the gateway
knows whether they may move at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from caldicott.policy.evidence import Evidence, checksum
from caldicott.policy.purposes import Protection, Purpose


class TransportError(Exception):
    """A delivery failed. ``retryable`` says whether trying again later may work.

    Messages name the recipient by opaque id and the peer's error, never patient data.
    """

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class Outbound:
    """One item to release: exactly the bytes that leave, and why.

    ``facts`` are the policy facts established for this item (e.g. ``gp_sharing_consent``), each as the
    :class:`~caldicott.policy.evidence.Evidence` the owning module minted for exactly these bytes; the gateway
    checks them against the purpose's rule. ``headers`` are transport hints (subject,
    filename, MESH workflow id, remote path) and must not carry patient data, except that a letter's
    e-mail subject may name the service.
    """

    item_id: str
    purpose: Purpose
    recipient: str
    channel: str
    payload: bytes
    protection: Protection
    address: str = ""                       # e-mail address, MESH mailbox, remote directory ...
    headers: Mapping[str, str] = field(default_factory=dict)
    facts: Mapping[str, Evidence] = field(default_factory=dict)
    disclosure_id: str | None = None

    @property
    def checksum(self) -> str:
        return checksum(self.payload)


@runtime_checkable
class Sender(Protocol):
    """Moves bytes to one kind of peer. Implementations live in ``caldicott.transport`` modules."""

    channel: str

    def send(self, item: Outbound) -> str:
        """Deliver ``item``; return the transport's reference for it. Raise TransportError on failure."""
        ...

    def already_delivered(self, item: Outbound) -> str | None:
        """After a crash mid-send: the transport reference if ``item`` did arrive, else None.

        Transports that cannot tell (plain SMTP) return None and rely on a deterministic Message-ID
        for the receiver to de-duplicate; see the README's exactly-once section.
        """
        ...
