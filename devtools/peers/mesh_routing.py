"""MESH registered-practice routing for mesh-sandbox, which has none: an ASGI wrapper around the sandbox's app.

Real MESH routes a message whose ``Mex-To`` is ``GPPROVIDER_<NHS number>_<birth date>_<surname>`` to the patient's
registered practice (an NHS number cross-check with PDS, then the practice's mailbox for the workflow; MESH guidance
"Endpoint lookup service and WorkflowIDs"); GP Connect Send Document requires it (GPCM-SD-056). mesh-sandbox only
knows mailbox ids and would refuse such an address, so this wrapper plays PDS and the lookup for the local test
world: a well-formed routing address is rewritten to the mailbox in ``MESH_GPPROVIDER_ROUTES`` (JSON, NHS number ->
mailbox) or else ``MESH_GPPROVIDER_MAILBOX``; anything else passes through untouched. Each routed address is
appended to ``MESH_ROUTING_LOG`` (synthetic data only) so tests can check what a sender asked for.

The sandbox's mailboxes are the three canned in its package; ``MESH_EXTRA_MAILBOXES`` (comma-separated ids) adds
more (password ``password``), e.g. the receiving providers' of the synthetic records source. They are added to the
canned list itself, so they survive the sandbox's own reset.

Run by :class:`devtools.peers.mesh.MeshPeer` inside ``.venv-mesh``: ``uvicorn mesh_routing:create_app --factory
--app-dir devtools/peers``. Importing this module needs nothing beyond the standard library (the sandbox is
imported by :func:`create_app`), so the demo's peer discovery can import it from the main venv.
"""

from __future__ import annotations

import json
import os
import re

ADDRESS = re.compile(r"GPPROVIDER_(\d{10})_(\d{8})_(\S+)")


def route(address: str, routes: dict[str, str], default: str) -> str | None:
    """The mailbox a routing address goes to, or None if ``address`` is not a well-formed routing address."""
    match = ADDRESS.fullmatch(address)
    if match is None:
        return None
    return routes.get(match.group(1)) or default or None


def add_mailboxes(mailbox_ids: list[str]) -> None:
    """Make the sandbox's store load ``mailbox_ids`` with its canned mailboxes (on every (re)initialise)."""
    if not mailbox_ids:
        return
    from mesh_sandbox.models.mailbox import Mailbox
    from mesh_sandbox.store.canned_store import CannedStore

    canned = CannedStore._load_mailboxes

    def load(self):
        boxes = canned(self)
        for mailbox_id in mailbox_ids:
            boxes.setdefault(mailbox_id, Mailbox(mailbox_id=mailbox_id, mailbox_name=mailbox_id,
                                                 password="password"))  # noqa: S106 - the sandbox's test password
        return boxes

    CannedStore._load_mailboxes = load


def create_app():
    add_mailboxes([m.strip().upper() for m in os.environ.get("MESH_EXTRA_MAILBOXES", "").split(",") if m.strip()])
    from mesh_sandbox.api import app as sandbox

    routes = json.loads(os.environ.get("MESH_GPPROVIDER_ROUTES") or "{}")
    default = os.environ.get("MESH_GPPROVIDER_MAILBOX", "")
    log_path = os.environ.get("MESH_ROUTING_LOG")

    async def app(scope, receive, send):
        if scope["type"] == "http" and scope.get("method") == "POST" and scope["path"].rstrip("/").endswith("/outbox"):
            headers = []
            for key, value in scope["headers"]:
                if key.lower() == b"mex-to":
                    address = value.decode("latin-1")
                    mailbox = route(address, routes, default)
                    if mailbox is not None:
                        if log_path:
                            with open(log_path, "a", encoding="utf-8") as fh:
                                fh.write(json.dumps({"mex_to": address, "mailbox": mailbox}) + "\n")
                        value = mailbox.encode()
                headers.append((key, value))
            scope = dict(scope, headers=headers)
        await sandbox(scope, receive, send)

    return app
