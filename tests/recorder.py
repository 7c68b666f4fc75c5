"""A Sender test double that keeps every item it is given, for tests about what a flow builds and where it routes
it, not about transport (the real transports are tested against real peers in tests/peers)."""

from __future__ import annotations

from caldicott.transport.base import Outbound


class Recorder:
    """Keeps every item it is given; answers "not delivered" to every reconciliation question."""

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.items: list[Outbound] = []

    def send(self, item: Outbound) -> str:
        self.items.append(item)
        return f"ref-{item.item_id}"

    def already_delivered(self, item: Outbound) -> str | None:
        return None
