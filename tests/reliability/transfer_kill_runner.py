"""A runner zygote (``runner.py``'s, unchanged) that also knows the transfer-of-care flow.

``python tests/reliability/transfer_kill_runner.py --serve``: imports ``runner`` from this folder, adds the step
``transfer`` (one planned batch through :func:`caldicott.transfers.flow.send_batch`, the DAG's ``send_batch``; with
``plan`` set, the day is planned first, so ``after_intent`` can kill the planning) and serves jobs exactly as
``runner.py --serve`` does, with the same kill points. Used by ``test_transfer_kills.py``; kept out of ``runner.py``
so that file stays as its owners shape it.
"""

from __future__ import annotations

import datetime as dt
import sys

import runner


def run_transfer(job: dict) -> dict:
    import smtplib

    from caldicott.db import make_engine
    from caldicott.transfers import flow
    from caldicott.transport.mesh import MeshSender, MeshSettings
    from caldicott.transport.sftp import SftpSender, paramiko_connector
    from caldicott.transport.smtp import SmtpSender

    from devtools.demo_service import demo_service

    records = make_engine(job["records_url"], readonly=True)
    state = make_engine(job["state_url"])
    start = dt.date.fromisoformat(job["day"])
    end = start + dt.timedelta(days=1)
    if job.get("plan"):
        flow.plan(records, state, start, end, job["day"])
    senders: dict = {}
    client = None
    if job.get("smtp_port"):
        client = smtplib.SMTP("127.0.0.1", job["smtp_port"], timeout=30)
        senders["smtp"] = SmtpSender(client, "transfers@nhs.example")
    if job.get("mesh"):
        senders["mesh"] = MeshSender.connect(MeshSettings(**job["mesh"]), "GPCONNECT_SEND_DOCUMENT")
    if job.get("sftp"):
        s = job["sftp"]
        conn = paramiko_connector("127.0.0.1", s["port"], s["username"], host_key=s["host_key"],
                                  password=s["password"], timeout=10)
        senders["sftp"] = SftpSender(conn, peer="receiver", create_dirs=True)
    wrap = runner._wrap(job.get("kill"))
    channels = flow.Channels({k: wrap(v) for k, v in senders.items()}, demo_service(), "transfers@nhs.example",
                             "X26ABC1")
    try:
        return flow.send_batch(records, state, job["batch"], channels, start, end)
    finally:
        if client is not None:
            client.quit()
        for s in senders.values():
            close = getattr(s, "close", None)
            if close is not None:
                close()


runner.FLOWS.update(transfer=run_transfer)


if __name__ == "__main__":
    if sys.argv[1:] != ["--serve"]:
        raise SystemExit("usage: transfer_kill_runner.py --serve")
    runner.preload()
    from caldicott.transfers import flow, render  # noqa: F401

    sys.stdout.write("ready\n")
    sys.stdout.flush()
    raise SystemExit(runner.serve())
