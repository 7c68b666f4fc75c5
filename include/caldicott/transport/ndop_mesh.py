"""The national data opt-out check over MESH: the request out (workflow ``SPINE_NTT_UPHOLDING``), the reply in.

The request is an ordinary MESH message sent by :class:`~caldicott.transport.mesh.MeshSender` (``local_id`` = the
ledger item id, so a crash after MESH accepted it is reconciled by outbox tracking, not resent), and only ever by
the release gateway (:mod:`caldicott.policy.ndop_check` hands it over as purpose ``ndop_check``). The reply is
recognised in Caldicott's inbox by its workflow (``SPINE_NTT_UPHOLDING`` or ``..._RESPONSE``: MESH filters the
inbox by that prefix) and the request's file name, read into memory, and acknowledged only after the checker has
cached its answers. Other messages in the inbox are left alone (other flows read them).

Reply correlation by workflow and file name is to be confirmed against NHS England's onboarding pack before live
use; this module is the one place to change it.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from caldicott.policy.ndop_check import NdopReply
from caldicott.transport.mesh import MeshSender

if TYPE_CHECKING:
    from mesh_client import MeshClient

WORKFLOW_ID = "SPINE_NTT_UPHOLDING"


class MeshNdopTransport:
    """NDOP requests and replies on one ``mesh_client.MeshClient`` (Caldicott's mailbox); the caller owns the client."""

    def __init__(self, client: MeshClient, service_mailbox: str, workflow_id: str = WORKFLOW_ID) -> None:
        self.client = client
        self.mailbox = service_mailbox
        self.workflow_id = workflow_id
        self.sender = MeshSender(client, workflow_id)
        self.label = f"MESH {service_mailbox} ({workflow_id})"

    def headers(self, filename: str) -> dict[str, str]:
        return {"workflow_id": self.workflow_id, "filename": filename, "content_type": "text/plain"}

    def fetch_reply(self, filename: str) -> NdopReply | None:
        # MESH filters the inbox by workflow ("begins with"), so other flows' messages are not even downloaded
        for message_id in list(self.client.iterate_message_ids(workflow_filter=f"{self.workflow_id}*")):
            msg = self.client.retrieve_message(message_id)
            try:
                workflow = getattr(msg, "workflow_id", "") or ""
                name = getattr(msg, "filename", "") or ""
                if not workflow.startswith(self.workflow_id) or name != filename:
                    continue
                body = msg.read()
            finally:
                msg.close()
            return NdopReply(body, functools.partial(self.client.acknowledge_message, message_id))
        return None
