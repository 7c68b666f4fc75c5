"""The body of ``gp_letters``' ``send_batch`` task: one planned batch, from its connections to the gateway.

Why a function here rather than code in the DAG: the benchmark (``bench/gp_letters.py``) must time exactly what the
task runs — the Airflow Variable ``caldicott_service``, the channel's sender from its Airflow connection (SMTP with
its TLS rules, the MESH hook's connections, the print house over SFTP or its staging folder), then
:func:`caldicott.letters.flow.send_batch` — and a copy in the bench would drift from the DAG. Both call this.
"""

from __future__ import annotations

import contextlib
import datetime as dt

SMTP_CONN_ID = "caldicott_smtp"
MESH_CONN_ID = "caldicott_mesh"
PRINT_CONN_ID = "caldicott_print"


def send_planned_batch(batch: dict, first: dt.date, end: dt.date, *, smtp_conn_id: str = SMTP_CONN_ID,
                       mesh_conn_id: str = MESH_CONN_ID, print_conn_id: str = PRINT_CONN_ID) -> dict:
    """Render, protect and release one batch planned by :func:`caldicott.letters.flow.plan` for ``[first, end)``;
    returns its counts and ids (XCom-safe). Fails before rendering anything when the sending service's Variable
    is not set (``AirflowFailException``) or a connection is refused (e.g. SMTP in clear over a network)."""
    from caldicott.letters.flow import SENDER_FOR, Channels
    from caldicott.letters.flow import send_batch as send

    from caldicott_airflow.connections import records_engine, state_engine
    from caldicott_airflow.service import sending_service
    from caldicott_airflow.transfers import connection_country  # each connection's ``country`` extra, default GB

    kind = SENDER_FOR[batch["channel"]]
    service = sending_service()   # Variable caldicott_service; unset: fails here, before anything is sent
    with contextlib.ExitStack() as stack:
        senders: dict = {}
        from_addr, mailbox, print_cert = "", "", None   # from_addr: the SMTP connection's from_email
        if kind == "smtp":
            from caldicott_airflow.smtp import smtp_sender

            senders["smtp"] = stack.enter_context(smtp_sender(smtp_conn_id))
            from_addr = senders["smtp"].from_addr
        elif kind == "mesh":
            from caldicott.letters.gp_connect import WORKFLOW

            from caldicott_airflow.hooks.mesh import MeshHook

            mesh = MeshHook(mesh_conn_id)
            stack.enter_context(mesh)
            mailbox = mesh.settings().mailbox
            senders["mesh"] = mesh.sender(WORKFLOW)   # several connections: sends overlap rendering
        elif kind == "post":
            from caldicott_airflow.print_house import post_sender

            sender, print_cert = post_sender(print_conn_id)
            senders["post"] = stack.enter_context(contextlib.closing(sender))
        channels = Channels(senders, service, from_addr, mailbox, print_cert)
        # the intermediary's country (the relay, MESH, the print house) goes on every item it carries and the
        # gateway checks it against the adequacy list, as for transfers
        if kind == "smtp":
            channels.relay_country = connection_country(smtp_conn_id)
        elif kind == "mesh":
            channels.mesh_country = connection_country(mesh_conn_id)
        elif kind == "post":
            channels.print_country = connection_country(print_conn_id)
        return send(records_engine(), state_engine(), batch, channels, first, end)
