"""Airflow adapter for transfer_of_care: connections -> the senders a batch needs, and the on-call alert for held or
refused reports. No domain logic (that is :mod:`caldicott.transfers.flow`).

Reuses the letters' and referrers' adapters: :func:`caldicott_airflow.smtp.smtp_sender` (S/MIME e-mail and the
patient's [secure] copy), :class:`caldicott_airflow.hooks.mesh.MeshHook` (receivers on MESH, GP copies as GP Connect
Send Document), :func:`caldicott_airflow.sftp.sftp_sender` (the receiver's own SFTP server, host key pinned) and
:func:`caldicott_airflow.print_house.post_sender` (posted patient copies).

Intermediaries' countries: each connection's ``country`` extra (ISO 3166-1 alpha-2), default ``GB``, goes on every
item it carries and the release gateway checks it against the adequacy list (docs/transfer_of_care.md).
"""

from __future__ import annotations

import contextlib
import os

SMTP_CONN_ID = "caldicott_smtp"
MESH_CONN_ID = os.environ.get("CALDICOTT_MESH_CONN_ID", "caldicott_mesh")
PRINT_CONN_ID = "caldicott_print"
SENDER_KIND = {"smime-email": "smtp", "smime": "smtp", "secure-email": "smtp", "mesh": "mesh", "post": "post",
               "sftp": "sftp"}


def connection_country(conn_id: str) -> str:
    """The ``country`` extra of ``conn_id`` (default GB, as documented); the gateway refuses a malformed one."""
    from airflow.sdk import BaseHook

    extra = BaseHook.get_connection(conn_id).extra_dejson or {}
    return str(extra.get("country") or "GB")


@contextlib.contextmanager
def channels_for(batch: dict, service, stack: contextlib.ExitStack, sftp_conn_id: str | None = None):
    """The :class:`caldicott.transfers.flow.Channels` for one batch, its connections closed by ``stack``."""
    from caldicott.transfers.flow import Channels

    kind = SENDER_KIND[batch["channel"]]
    ch = Channels({}, service)
    if kind == "smtp":
        from caldicott_airflow.smtp import smtp_sender

        ch.senders["smtp"] = stack.enter_context(smtp_sender(SMTP_CONN_ID))
        ch.from_addr = ch.senders["smtp"].from_addr
        ch.relay_country = connection_country(SMTP_CONN_ID)
    elif kind == "mesh":
        from caldicott.letters.gp_connect import WORKFLOW

        from caldicott_airflow.hooks.mesh import MeshHook

        mesh = MeshHook(MESH_CONN_ID)
        stack.enter_context(mesh)
        ch.sender_mailbox = mesh.settings().mailbox
        ch.senders["mesh"] = mesh.sender(WORKFLOW)   # the item's workflow_id header names each receiver's own
        ch.mesh_country = connection_country(MESH_CONN_ID)
    elif kind == "post":
        from caldicott_airflow.print_house import post_sender

        sender, ch.print_certificate_pem = post_sender(PRINT_CONN_ID)
        ch.senders["post"] = stack.enter_context(contextlib.closing(sender))
        ch.print_country = connection_country(PRINT_CONN_ID)
    elif kind == "sftp":
        from caldicott_airflow.sftp import sftp_sender

        if not sftp_conn_id:
            raise ValueError(f"batch {batch['batch_id']}: the receiver has no SFTP connection")
        ch.senders["sftp"] = stack.enter_context(sftp_sender(sftp_conn_id, peer=batch["batch_id"].rsplit("/", 1)[-1]))
    yield ch


def alert_held(dag_id: str, run_id: str | None, held: dict[str, str], refused: dict[str, str]) -> dict[str, bool]:
    """Tell on-call about reports that did not go (held: no usable channel; refused: by the release gateway, e.g.
    a country not on the adequacy list). Ids and reason codes only, never patient data. Never raises."""
    from caldicott.redact import scrub

    from caldicott_airflow.notifiers import dispatch

    if not held and not refused:
        return {}
    msg = {"kind": "transfer_reports_not_sent", "dag_id": dag_id, "run_id": run_id,
           "held": len(held), "refused": len(refused),
           "held_ids": sorted(held)[:20], "refused_ids": sorted(refused)[:20],
           "reasons": sorted({scrub(str(r)) for r in [*held.values(), *refused.values()]})[:10],
           "what_to_do": "docs/runbook.md, 'transfer_of_care: reports held or refused'"}
    return dispatch(msg)
