"""MESH reports: the non-delivery report (NDR) a sender's inbox receives when a message was not collected.

MESH keeps a message in the recipient's inbox for five days; if nobody downloads it, the central system
puts a ``REPORT`` message (``Mex-MessageType: REPORT``, ``Mex-StatusSuccess: ERROR``, a status code and
event, ``Mex-LinkedMsgID`` = the undelivered message's id, and its ``Mex-LocalID``) in the *sender's* inbox.
Without reading these, a GP letter that never reached the practice would only surface as "no business ack"
days later. :func:`read_reports` yields them (and removes each from the inbox once the caller has recorded
it); ITK3 acks are read by :func:`caldicott.transport.mesh.read_acks`, which leaves reports where they are.

Reports carry ids and status codes only: no patient data reaches logs from here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mesh_client import MeshClient


@dataclass(frozen=True)
class Report:
    """One MESH report about a message this mailbox sent."""

    report_id: str              # the report's own MESH message id
    linked_message_id: str      # the MESH message id it is about (the ledger's transport_ref)
    local_id: str               # the original's Mex-LocalID (Caldicott's ledger item id)
    status: str                 # e.g. "ERROR"
    code: str                   # MESH status code, e.g. "14" (undelivered: not collected in time)
    event: str                  # e.g. "TRANSFER"


def read_reports(client: MeshClient, limit: int = 500, workflow_id: str | None = None) -> Iterator[Report]:
    """Yield each ``REPORT`` message in the inbox; acknowledge (remove) it after the caller has taken it.

    A report carries the workflow id of the message it is about (MESH API, "Error Report Header"), so
    ``workflow_id`` (e.g. GP Connect's ``GPCONNECT_SEND_DOCUMENT``) makes MESH list only this flow's reports:
    another flow's report in a shared mailbox is then left for that flow instead of being consumed here."""
    for n, message_id in enumerate(client.iterate_message_ids(workflow_filter=workflow_id)):
        if n >= limit:
            break
        msg = client.retrieve_message(message_id)
        try:
            if str(getattr(msg, "message_type", "") or "").upper() != "REPORT":
                continue
            mex = getattr(msg, "_mex_headers", {}) or {}
            report = Report(report_id=message_id, linked_message_id=str(mex.get("linkedmsgid") or ""),
                            local_id=str(getattr(msg, "local_id", None) or mex.get("localid") or ""),
                            status=str(mex.get("statussuccess") or ""), code=str(mex.get("statuscode") or ""),
                            event=str(mex.get("statusevent") or ""))
        finally:
            msg.close()
        yield report
        client.acknowledge_message(message_id)


__all__ = ["Report", "read_reports"]
