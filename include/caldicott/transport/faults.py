"""A test-only fault hook: a sender wrapper that crashes after N sends, to prove crash-safety.

Enabled only when a flow is asked for it explicitly (the ``gp_letters`` DAG's ``fault_after_sends``
param, documented as test-only). It raises *inside* ``send`` before the (N+1)th delivery, i.e. after the
ledger marked that item ``sending``: exactly the state a killed worker leaves behind.
"""

from __future__ import annotations

from caldicott.transport.base import Outbound


class InjectedFault(RuntimeError):
    """Raised by :class:`CrashAfter`; the message carries only the count."""


class CrashAfter:
    def __init__(self, sender, after: int) -> None:
        self.inner = sender
        self.channel = sender.channel
        self.after = after
        self.sent = 0

    def send(self, item: Outbound) -> str:
        if self.sent >= self.after:
            raise InjectedFault(f"test fault: crashed after {self.sent} sends")
        ref = self.inner.send(item)
        self.sent += 1
        return ref

    def already_delivered(self, item: Outbound) -> str | None:
        return self.inner.already_delivered(item)
