"""Run one flow step in a separate process and, when asked, SIGKILL it at a chosen point.

Two ways to use it:

* ``python tests/reliability/runner.py JOB.json`` runs one job and exits (used for the disk-full case,
  which runs inside a private mount namespace with a tiny tmpfs).
* ``python tests/reliability/runner.py --serve`` is a *zygote*: it imports the flows once, then reads one
  JSON job per line on stdin, ``fork()``s a child per job, waits for it and writes one JSON line back:
  ``{"rc": <exit code or -signal>, "result": <what the child wrote, or null>}``. The child is a real,
  separate process; killing it with SIGKILL is exactly what the kernel does to an OOM-killed or
  ``kill -9``'d Airflow worker (no ``finally``, no atexit, no flush). Forking saves re-importing pandas,
  cryptography and the flows for each of the ~30 kill points, which keeps the suite inside its CI budget.
  The zygote starts no threads and opens no connections, so forking it is safe; each child builds its own
  engines and clients.

A job names the flow step and its peers, and optionally ``kill: {"at": POINT, "n": N}``:

``after_intent``   after the step recorded its ledger intents, before anything was sent
``before_send``    as the N-th send starts, before a byte reaches the peer
``mid_send``       during the N-th transfer: SMTP after DATA and half the message; SFTP after half the
                   ``.part`` file was written (synchronously, so the peer holds it); staging after half the
                   ``.part`` file was written
``before_rename``  staging only: the N-th ``.part`` file is complete but not yet renamed
``after_send``     the peer accepted the N-th item (SMTP 250, MESH 202, SFTP rename done, staging rename
                   done) but the ledger has not recorded it: the dangerous window
``after_mark``     right after the ledger committed ``sent`` for the N-th item
``reconcile``      inside the N-th ``already_delivered`` call (a crash while recovering from a crash)
``mid_archive``    data set build: half the encrypted archive's ``.part`` written
``before_register`` data set build: the archive is whole on disk, the state database does not know it yet

The child writes its result (counts / ids only) to ``job["result_path"]`` before exiting normally.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:   # run as a script: ``devtools`` (the demo's service identity) is not installed
    sys.path.insert(0, str(ROOT))


def die() -> None:
    """SIGKILL this process: no cleanup of any kind runs."""
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class Killer:
    """A Sender wrapper that kills the process at the job's kill point (see the module docstring)."""

    def __init__(self, inner, at: str, n: int) -> None:
        self.inner = inner
        self.channel = inner.channel
        # the gateway's chunked path (concurrent sends, one ``sent`` transaction per chunk) is what gets killed
        self.reconcilable = getattr(inner, "reconcilable", False)
        self.concurrency = getattr(inner, "concurrency", 1)
        self.at = at
        self.n = n
        self.sends = 0
        self.checks = 0

    def send(self, item):
        self.sends += 1
        hit = self.sends == self.n
        if hit and self.at == "before_send":
            die()
        if hit and self.at in ("mid_send", "before_rename"):
            _arm_mid_send(self.inner, self.at)
        ref = self.inner.send(item)
        if hit and self.at == "after_send":
            die()
        return ref

    def already_delivered(self, item):
        self.checks += 1
        if self.at == "reconcile" and self.checks == self.n:
            die()
        return self.inner.already_delivered(item)

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()

    def __getattr__(self, name: str):
        """Anything else (e.g. ``use_journal``, which the letters flow calls on its sender) is the inner sender's."""
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


class HalfFile:
    """A file opened for writing that writes half of what it is given, makes it durable, then SIGKILLs."""

    def __init__(self, fh) -> None:
        self.fh = fh

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.fh.close()

    def write(self, data) -> None:
        self.fh.write(bytes(data)[: max(1, len(data) // 2)])
        self.fh.flush()
        os.fsync(self.fh.fileno())
        die()


def half_file_fdopen(real_fdopen):
    """An ``os.fdopen`` whose files are :class:`HalfFile` (patch it into the module that writes the file)."""
    return lambda fd, mode="r", *a, **k: HalfFile(real_fdopen(fd, mode, *a, **k))


def _os_with(**overrides):
    """A copy of the ``os`` module with some functions replaced, to patch ONE module's view of ``os``."""
    import types

    proxy = types.ModuleType("os")
    proxy.__dict__.update(os.__dict__)
    proxy.__dict__.update(overrides)
    return proxy


def _arm_mid_send(sender, at: str) -> None:
    """Make the next transfer of ``sender`` die half-way (channel-specific)."""
    channel = sender.channel
    if channel == "smtp":
        sender.client = _HalfSmtp(sender.client)
    elif channel == "sftp":
        import paramiko

        original = paramiko.SFTPFile.write
        paramiko.SFTPFile.set_pipelined = lambda self, pipelined=True: None  # every write acknowledged

        def half_write(self, data):
            data = bytes(data)
            original(self, data[: max(1, len(data) // 2)])
            self.flush()
            die()

        paramiko.SFTPFile.write = half_write
    elif channel == "staging":
        import pathlib

        from caldicott.transport import staging

        if at == "before_rename":
            pathlib.Path.replace = lambda self, target: die()
        else:
            staging.os = _os_with(fdopen=half_file_fdopen(os.fdopen))
    else:
        raise ValueError(f"no mid-send kill point for channel {channel}")


class _HalfSmtp:
    """An smtplib client stand-in that starts DATA, sends half the message, then dies (no final '.')."""

    def __init__(self, client) -> None:
        self.client = client

    def sendmail(self, from_addr, to_addrs, msg: bytes):
        c = self.client
        c.ehlo_or_helo_if_needed()
        c.mail(from_addr)
        for rcpt in to_addrs:
            c.rcpt(rcpt)
        code, _ = c.docmd("DATA")
        assert code == 354, code
        c.send(bytes(msg)[: len(msg) // 2])
        die()


def _arm_ledger(at: str, n: int) -> None:
    from caldicott.transport.ledger import Ledger

    if at == "after_mark":
        original = Ledger.mark_sent
        seen = {"n": 0}

        def mark_sent(self, item_id, **kw):
            ok = original(self, item_id, **kw)
            seen["n"] += 1
            if seen["n"] == n:
                die()
            return ok

        Ledger.mark_sent = mark_sent
        original_many = Ledger.mark_sent_many

        def mark_sent_many(self, sent):   # a chunk's ``sent`` marks are one commit: die after it reaches the N-th
            ok = original_many(self, sent)
            seen["n"] += len(sent)
            if sent and seen["n"] >= n:
                die()
            return ok

        Ledger.mark_sent_many = mark_sent_many
    elif at == "after_intent":
        original_intent = Ledger.record_intent

        def record_intent(self, intents):
            out = original_intent(self, intents)
            die()
            return out

        Ledger.record_intent = record_intent


def _wrap(kill):
    if not kill or kill["at"] in ("after_mark", "after_intent"):
        return lambda s: s
    return lambda s: Killer(s, kill["at"], kill["n"])


# ---- the flow steps ------------------------------------------------------------------------------

def run_letters(job: dict) -> dict:
    import smtplib

    from caldicott.db import make_engine
    from caldicott.letters import flow, gp_connect
    from caldicott.transport.mesh import MeshSender, MeshSettings
    from caldicott.transport.smtp import SmtpSender

    from devtools.demo_service import demo_service

    records = make_engine(job["records_url"], readonly=True)
    state = make_engine(job["state_url"])
    start, end = dt.date.fromisoformat(job["start"]), dt.date.fromisoformat(job["end"])
    if job.get("plan"):
        flow.plan(records, state, start, end, job["run_key"])
    senders = {}
    client = None
    if job.get("smtp_port"):
        client = smtplib.SMTP("127.0.0.1", job["smtp_port"], timeout=job.get("smtp_timeout", 30))
        senders["smtp"] = SmtpSender(client, job.get("from_addr", "letters@nhs.example"))
    if job.get("mesh"):
        # ``mesh_connections`` > 1 as in production (MeshHook.sender): kills land with several sends in flight
        senders["mesh"] = MeshSender.connect(MeshSettings(**job["mesh"]), gp_connect.WORKFLOW,
                                             connections=job.get("mesh_connections", 1))
    wrap = _wrap(job.get("kill"))
    channels = flow.Channels({k: wrap(s) for k, s in senders.items()}, demo_service(), "letters@nhs.example",
                             job.get("sender_mailbox", "X26ABC1"))
    out = flow.send_batch(records, state, job["batch"], channels, start, end, chunk=job.get("chunk", flow.CHUNK))
    if client is not None:
        client.quit()
    return out


def run_updates(job: dict) -> dict:
    from caldicott.db import make_engine
    from caldicott.transport.sftp import SftpSender, paramiko_connector
    from caldicott.updates import deliver

    records = make_engine(job["records_url"], readonly=True)
    state = make_engine(job["state_url"])
    s = job["sftp"]
    wrap = _wrap(job.get("kill"))

    def factory(options, contract):
        conn = paramiko_connector("127.0.0.1", s["port"], s["username"], host_key=s["host_key"],
                                  password=s["password"], timeout=10)
        return wrap(SftpSender(conn, peer=options.contract_id, create_dirs=True))

    first, end = dt.date.fromisoformat(job["first"]), dt.date.fromisoformat(job["end"])
    month = dt.date.fromisoformat(job["activity_month"]) if job.get("activity_month") else None
    try:
        res = deliver.deliver_contract(records, state, job["contract_id"], first, end, job["run_key"], factory,
                                       activity_month=month)
    except deliver.ContractDeliveryError as exc:
        return {"error": str(exc), "retryable": exc.retryable}
    return res.as_dict()


def run_dataset(job: dict) -> dict:
    from caldicott.dataset import pipeline
    from caldicott.dataset.builder import Period
    from caldicott.dataset.submit import resolve_target, submit
    from caldicott.db import make_engine
    from caldicott.policy.evidence import establish
    from caldicott.transport.staging import StagingSender

    state = make_engine(job["state_url"])
    year, month = (int(x) for x in job["month"].split("-")[:2])
    period = Period.month(year, month)
    s = pipeline.Settings(org_provider="ZZZ01", work_dir=Path(job["work_dir"]), key=bytes.fromhex(job["key_hex"]))
    sender = _wrap(job.get("kill"))(StagingSender(Path(job["staging"])))
    first = submit(state, period, resolve_target("staged", None, submitter=s.submitter), sender)   # as the DAG
    blob = Path(job["extract_blob"]).read_bytes()   # as pipeline.planning_extract made it (apply_ndop), so:
    second = pipeline.stage_extract(state, period, s, pipeline.PlanningExtract(blob, establish("ndop_applied", blob)),
                                    sender)
    return {"submission": first, "extract": second}


def run_dataset_build(job: dict) -> dict:
    """Build, validate and write the month's encrypted archive, then stage it (kill points inside the build)."""
    from caldicott.dataset import pipeline, writer
    from caldicott.dataset.builder import Period
    from caldicott.dataset.submit import resolve_target, submit
    from caldicott.db import make_engine
    from caldicott.transport.staging import StagingSender

    kill = job.get("kill") or {}
    if kill.get("at") == "mid_archive":        # half the archive's .part written, then SIGKILL
        real_fdopen = os.fdopen

        class HalfFile:
            def __init__(self, fh) -> None:
                self.fh = fh

            def __enter__(self):
                return self

            def __exit__(self, *exc) -> None:
                self.fh.close()

            def write(self, data) -> None:
                self.fh.write(bytes(data)[: max(1, len(data) // 2)])
                self.fh.flush()
                die()

        writer.os = _os_with(fdopen=lambda fd, mode="r", *a, **k: HalfFile(real_fdopen(fd, mode, *a, **k)))
    elif kill.get("at") == "before_register":  # archive whole on disk, the state database does not know it
        pipeline.state_tables.register = lambda *a, **k: die()
    records = make_engine(job["records_url"], readonly=True)
    state = make_engine(job["state_url"])
    year, month = (int(x) for x in job["month"].split("-")[:2])
    period = Period.month(year, month)
    s = pipeline.Settings(org_provider="ZZZ01", work_dir=Path(job["work_dir"]), key=bytes.fromhex(job["key_hex"]))
    built = pipeline.build_validate_write(records, state, period, s)
    staged = submit(state, period, resolve_target("staged", None, submitter=s.submitter),
                    StagingSender(Path(job["staging"])))
    return {"build": {"state": built["state"], "rebuilt": built["rebuilt"]}, "stage": staged}


def run_staging_disk_full(job: dict) -> dict:
    """Stage one encrypted file into a staging folder that is full, then again once there is space.

    With ``inject`` false the folder is a tiny tmpfs (mounted by the caller in a private mount namespace)
    and "space is freed" by remounting it larger; with ``inject`` true the file layer raises ENOSPC half-way
    through the write instead (for machines where mounting is not allowed).
    """
    import errno
    import hashlib
    import subprocess

    from caldicott.db import make_engine
    from caldicott.gateway import release
    from caldicott.policy.evidence import establish
    from caldicott.policy.purposes import Protection, Purpose
    from caldicott.transport import staging
    from caldicott.transport.base import Outbound, TransportError
    from caldicott.transport.ledger import Intent, Ledger

    state = make_engine(job["state_url"])
    root = Path(job["staging"])
    payload = hashlib.shake_256(b"caldicott").digest(job["payload_kib"] * 1024)
    item = Outbound("monthly_dataset-diskfull", Purpose.MANDATED_DATASET, "named-submitter", "staging", payload,
                    Protection.STAGED_ENCRYPTED, address="2026-10", headers={"filename": "iapt_2026-10.zip.enc"},
                    facts={"validated": establish("validated", payload)})
    Ledger(state).record_intent([Intent(item.item_id, "monthly_dataset", Purpose.MANDATED_DATASET.value, "2026-10",
                                        "named-submitter", "staging", "2026-10")])
    sender = staging.StagingSender(root)
    real_fdopen = os.fdopen
    if job["inject"]:
        class Full:
            def __init__(self, fh) -> None:
                self.fh = fh

            def __enter__(self):
                return self

            def __exit__(self, *exc) -> None:
                self.fh.close()

            def write(self, data) -> None:
                self.fh.write(bytes(data)[: len(data) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        staging.os = _os_with(fdopen=lambda fd, mode="r", *a, **k: Full(real_fdopen(fd, mode, *a, **k)))
    out: dict = {}
    try:
        sender.send(item)
        out["errno"] = None
    except TransportError as exc:
        out["retryable"] = exc.retryable
        cause = exc.__cause__
        out["errno"] = errno.errorcode.get(getattr(cause, "errno", None) or 0)
    out["first"] = release([item], sender, state).counts()
    entry = Ledger(state).get(item.item_id)
    out["state_after_failure"] = entry.state.value
    with state.connect() as conn:
        from caldicott.transport.ledger import ledger
        from sqlalchemy import select
        out["error"] = conn.execute(select(ledger.c.detail).where(ledger.c.item_id == item.item_id)).scalar_one()
    final = root / "2026-10" / "iapt_2026-10.zip.enc"
    out["final_after_failure"] = final.exists()
    out["parts_after_failure"] = [p.name for p in root.rglob("*.part")]
    # space comes back
    if job["inject"]:
        staging.os = os
    else:
        subprocess.run(["mount", "-o", "remount,size=4m", str(root)], check=True)
    out["second"] = release([item], sender, state).counts()
    out["final_ok"] = final.exists() and final.read_bytes() == payload
    out["parts_left"] = [p.name for p in root.rglob("*.part")]
    return out


FLOWS = {"letters": run_letters, "updates": run_updates, "dataset": run_dataset, "dataset_build": run_dataset_build,
         "staging_disk_full": run_staging_disk_full}


def run(job: dict) -> None:
    kill = job.get("kill")
    if kill:
        _arm_ledger(kill["at"], kill["n"])
    result = FLOWS[job["flow"]](job)
    Path(job["result_path"]).write_text(json.dumps(result, default=str))


def _child(job: dict) -> int:
    try:
        run(job)
        return 0
    except BaseException as exc:  # report the type only; the message is checked by the test, not printed
        Path(job["result_path"]).write_text(json.dumps({"exception": type(exc).__name__, "message": str(exc)}))
        return 3


def serve() -> int:
    """The zygote loop: one job per stdin line, one reply per stdout line."""
    for line in sys.stdin:
        if not line.strip():
            continue
        job = json.loads(line)
        Path(job["result_path"]).unlink(missing_ok=True)
        pid = os.fork()
        if pid == 0:  # child
            code = 1
            try:
                code = _child(job)
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        rp = Path(job["result_path"])
        result = json.loads(rp.read_text()) if rp.exists() else None
        sys.stdout.write(json.dumps({"rc": rc, "result": result}) + "\n")
        sys.stdout.flush()
    return 0


def preload() -> None:
    """Import everything a child needs, once, in the zygote (no threads, no sockets)."""
    import smtplib  # noqa: F401

    import paramiko  # noqa: F401
    from caldicott.dataset import pipeline  # noqa: F401
    from caldicott.letters import flow, gp_connect, render  # noqa: F401
    from caldicott.transport import mesh, sftp, smtp, staging  # noqa: F401
    from caldicott.updates import deliver  # noqa: F401

    from devtools import demo_service  # noqa: F401


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        preload()
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        raise SystemExit(serve())
    _job = json.loads(Path(sys.argv[1]).read_text())
    raise SystemExit(_child(_job))
