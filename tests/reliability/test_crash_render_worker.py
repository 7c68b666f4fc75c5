"""Crash and retry with letters rendered in a worker process (issue 13, :mod:`caldicott.letters.render_pool`).

The render worker only turns letter content into PDF bytes; the ledger claims, the sends and their ``sent`` marks
stay in the sending process (the gateway). These tests SIGKILL each side mid-batch and check the SMTP server's own
records: every planned letter arrives, and no letter arrives twice.

* the **render worker** is killed while the batch is being sent: the batch stops with ``RenderWorkerLost`` after
  the letters already rendered went out; the retry (a fresh worker) sends the rest, once each;
* the **sending process** is killed (SIGKILL, as an OOM-killed Airflow worker) with the render worker busy ahead of
  it: its render worker exits on its own (no orphan), and the re-run sends the rest, once each.

The batches here are large enough (well over the look-ahead window) that rendering cannot finish before the kill,
and ``CALDICOTT_RENDER_POOL_MIN=1`` makes every batch use the pool. No timing is asserted. Their figures are counted
apart from "kill points survived" (the total the reliability docs quote).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from caldicott.letters import flow, render_pool
from caldicott.letters.messages import message_id
from caldicott.letters.render_pool import RenderWorkerLost
from caldicott.transport.ledger import DONE, Ledger, State
from caldicott.transport.smtp import SmtpSender

from devtools.demo_service import demo_service
from devtools.peers.smtp import SmtpPeer

from .conftest import KILLED, figure, new_state

START, END = dt.date(2025, 1, 1), dt.date(2026, 11, 1)
ROOT = Path(__file__).resolve().parents[2]


def _patient_email_batch(records, state) -> dict:
    planned = flow.plan(records, state, START, END, "render-kill")
    (batch,) = [b for b in planned["batches"] if b["channel"] == "secure-email"]
    assert len(batch["letters"]) > 3 * render_pool.WINDOW, "the batch must outrun the render look-ahead"
    return batch


def _ids(batch: dict) -> set[str]:
    return {flow.letter_id(r, e, batch["kind"]) for r, e in batch["letters"]}


def _channels(sender) -> flow.Channels:
    return flow.Channels({"smtp": sender}, demo_service(), "letters@nhs.example")


class _KillsRenderWorker:
    """An SMTP sender that SIGKILLs the render worker as its ``n``-th send starts (then sends it)."""

    channel = "smtp"
    reconcilable = False

    def __init__(self, inner: SmtpSender, n: int) -> None:
        self.inner, self.n, self.sends, self.killed = inner, n, 0, []

    def send(self, item):
        self.sends += 1
        if self.sends == self.n:
            for pid in render_pool.worker_pids():
                os.kill(pid, signal.SIGKILL)
                self.killed.append(pid)
        return self.inner.send(item)

    def already_delivered(self, item):
        return self.inner.already_delivered(item)


def _assert_once_each(smtp: SmtpPeer, ids: set[str]) -> None:
    got = [m["Message-ID"] for m in smtp.messages()]
    assert set(got) == {message_id(i) for i in ids}, "a planned letter is missing at the SMTP server"
    assert len(got) == len(set(got)), f"{len(got) - len(set(got))} letter(s) arrived twice"


def test_render_worker_killed_mid_batch_then_retry_sends_each_letter_once(synth_source, tmp_path, monkeypatch):
    import smtplib

    monkeypatch.setenv("CALDICOTT_RENDER_POOL_MIN", "1")
    _, state = new_state(tmp_path)
    batch = _patient_email_batch(synth_source.engine, state)
    ids = _ids(batch)
    with SmtpPeer(tmp_path / "smtp") as smtp:
        client = smtplib.SMTP("127.0.0.1", smtp.port)
        killer = _KillsRenderWorker(SmtpSender(client, "letters@nhs.example"), n=5)
        with pytest.raises(RenderWorkerLost):
            flow.send_batch(synth_source.engine, state, batch, _channels(killer), START, END)
        assert killer.killed, "the render worker was not running"
        entries = Ledger(state).entries(sorted(ids))
        first = {i for i, e in entries.items() if e.state in DONE}
        assert 5 <= len(first) < len(ids)          # what was rendered before the kill went; the rest did not
        assert all(e.state == State.INTENDED for i, e in entries.items() if i not in first)
        # the retry: a fresh worker renders what is left; nothing already sent is sent again
        retry = _channels(SmtpSender(client, "letters@nhs.example"))
        result = flow.send_batch(synth_source.engine, state, batch, retry, START, END)
        client.quit()
        assert result["failed"] == 0 and result["already_sent"] == len(first)
        assert result["sent"] == len(ids) - len(first)
        assert render_pool.worker_pids() and not set(render_pool.worker_pids()) & set(killer.killed)
        _assert_once_each(smtp, ids)
    figure("kill points survived")
    figure("kill points survived: gp letters render worker")


_CHILD = """
import json, os, smtplib, sys
from caldicott.db import make_engine
from caldicott.letters import flow, render_pool
from caldicott.transport.smtp import SmtpSender
from devtools.demo_service import demo_service
from tests.reliability.runner import die

job = json.loads(sys.argv[1])
start, end = (flow.dt.date.fromisoformat(job[k]) for k in ("start", "end"))

class DiesMidBatch:
    channel, reconcilable = "smtp", False
    def __init__(self, inner):
        self.inner, self.sends = inner, 0
    def send(self, item):
        self.sends += 1
        if self.sends == job["n"]:   # before the n-th send: the render worker is busy ahead of us
            with open(job["pids"], "w") as fh:
                json.dump(render_pool.worker_pids(), fh)
            die()
        return self.inner.send(item)
    def already_delivered(self, item):
        return self.inner.already_delivered(item)

client = smtplib.SMTP("127.0.0.1", job["smtp_port"])
sender = DiesMidBatch(SmtpSender(client, "letters@nhs.example"))
flow.send_batch(make_engine(job["records_url"], readonly=True), make_engine(job["state_url"]), job["batch"],
                flow.Channels({"smtp": sender}, demo_service(), "letters@nhs.example"), start, end)
"""


def _gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for a reaper counts: it runs nothing)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return True


def test_sending_process_killed_with_render_worker_busy_leaves_no_orphan_and_rerun_sends_each_once(
        synth_source, tmp_path):
    import smtplib

    url, state = new_state(tmp_path)
    batch = _patient_email_batch(synth_source.engine, state)
    ids = _ids(batch)
    pids_file = tmp_path / "render-pids.json"
    with SmtpPeer(tmp_path / "smtp") as smtp:
        job = {"records_url": synth_source.url, "state_url": url, "batch": batch, "start": START.isoformat(),
               "end": END.isoformat(), "smtp_port": smtp.port, "n": 40, "pids": str(pids_file)}
        env = {**os.environ, "CALDICOTT_RENDER_POOL_MIN": "1",
               "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(job)], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == KILLED, proc.stderr[-2000:]
        workers = json.loads(pids_file.read_text())
        assert workers, "the render worker was not running when the sending process died"
        deadline = time.monotonic() + 30
        while not all(_gone(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert all(_gone(p) for p in workers), "the render worker outlived its killed parent"
        sent_before = {i for i, e in Ledger(state).entries(sorted(ids)).items() if e.state in DONE}
        assert 0 < len(sent_before) < len(ids)
        client = smtplib.SMTP("127.0.0.1", smtp.port)
        result = flow.send_batch(synth_source.engine, state, batch,
                                 _channels(SmtpSender(client, "letters@nhs.example")), START, END)
        client.quit()
        assert result["failed"] == 0 and result["sent"] + result["already_sent"] == len(ids)
        _assert_once_each(smtp, ids)
    figure("kill points survived")
    figure("kill points survived: gp letters sending process with a render worker")
