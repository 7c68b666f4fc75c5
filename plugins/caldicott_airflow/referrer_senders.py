"""The sender for one referrer contract, from Airflow connections (adapter only; no domain logic).

* ``transport = 'sftp'``: the contract's own ``connection_id`` (host key pinned), see :mod:`.sftp`;
* ``transport = 'mesh'``: Caldicott's MESH mailbox (connection ``caldicott_mesh``, or
  ``CALDICOTT_MESH_CONN_ID``) through :class:`caldicott.transport.mesh.MeshSender`, to the contract's
  ``mesh_mailbox`` with its ``mesh_workflow``.

Anything else returns None: the contract's files are held in the ledger ("transport not available").
"""

from __future__ import annotations

import os

from caldicott_airflow.sftp import sftp_sender

MESH_CONN_ID = os.environ.get("CALDICOTT_MESH_CONN_ID", "caldicott_mesh")


class _ClosingMeshSender:
    """A MeshSender that closes its hook's client when the contract is done."""

    channel = "mesh"

    def __init__(self, hook, sender) -> None:
        self._hook, self._sender = hook, sender

    def send(self, item):
        return self._sender.send(item)

    def already_delivered(self, item):
        return self._sender.already_delivered(item)

    def use_journal(self, journal):
        """Journal MESH message ids (crash recovery by the current tracking endpoint); returns this sender."""
        self._sender.use_journal(journal)
        return self

    def close(self) -> None:
        self._hook.close()


def sender_for(options, contract: dict):
    """The :class:`~caldicott.transport.base.Sender` for ``contract``, or None if its transport is unknown."""
    if options.transport == "sftp" and contract.get("connection_id"):
        return sftp_sender(str(contract["connection_id"]), peer=options.contract_id)
    if options.transport == "mesh" and contract.get("mesh_mailbox") and contract.get("mesh_workflow"):
        from caldicott.transport.mesh import MeshSender

        from caldicott_airflow.hooks.mesh import MeshHook

        hook = MeshHook(MESH_CONN_ID)
        try:
            client = hook.get_conn()
        except Exception:
            hook.close()
            raise
        return _ClosingMeshSender(hook, MeshSender(client, str(contract["mesh_workflow"]),
                                                   max_chunk_bytes=hook.settings().max_chunk_bytes))
    return None
