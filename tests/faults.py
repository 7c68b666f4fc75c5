"""Test-only fault injection: a sender wrapper that crashes after N sends, and its switch for the e2e Airflow.

Crash-safety is proved by crashing a batch part-way and re-running it: nothing may be lost or sent twice. The
switch lives here, on the test side, and nowhere in ``dags/``, ``plugins/`` or ``include/`` (issue 14): a DAG
param or production code path that crashes sends on request is a way for anyone who can trigger a DAG to
break deliveries.

* :class:`CrashAfter` wraps a :class:`caldicott.transport.base.Sender` directly (domain-level tests build the
  flow's ``Channels`` with it).
* :func:`e2e_airflow_env` / :func:`arm` / :func:`fired` drive the same wrapper *inside* the e2e Airflow's task
  processes, through ``tests/e2e/worker_site/sitecustomize.py`` (see that module, and docs/reliability.md).
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

from caldicott.transport.base import Outbound

#: Environment variable naming the control file; set only in the e2e Airflow's environment.
CONTROL_ENV = "CALDICOTT_E2E_FAULTS"
#: The folder holding the worker-side ``sitecustomize``; only the e2e Airflow has it on its PYTHONPATH.
WORKER_SITE = Path(__file__).resolve().parent / "e2e" / "worker_site"


class InjectedFault(RuntimeError):
    """Raised by :class:`CrashAfter`; the message carries only the count."""


class CrashAfter:
    """Lets ``after`` sends start, then raises *inside* ``send`` before the next one reaches the peer.

    The gateway has already claimed that item (ledger ``sending``): exactly the state a crashed worker leaves
    behind. ``reconcilable``, ``concurrency`` and every other attribute are the wrapped sender's, so the flow and
    the gateway take the same path as in production (concurrent sends for MESH); sends are counted as they
    start, under a lock, so no more than ``after`` reach the peer however many run at once.
    """

    def __init__(self, sender, after: int, fault: Callable[[str], BaseException] = InjectedFault) -> None:
        self.inner = sender
        self.channel = sender.channel
        self.reconcilable = getattr(sender, "reconcilable", False)
        self.concurrency = getattr(sender, "concurrency", 1)
        self.after = after
        self.fault = fault
        self.started = 0
        self.crashed = False
        self._lock = threading.Lock()

    def send(self, item: Outbound) -> str:
        with self._lock:
            if self.started >= self.after:
                self.crashed = True
                raise self.fault(f"test fault: crashed after {self.after} sends")
            self.started += 1
        return self.inner.send(item)

    def already_delivered(self, item: Outbound) -> str | None:
        return self.inner.already_delivered(item)

    def __getattr__(self, name: str):
        """Anything else (``use_journal``, ``close`` ...) is the wrapped sender's, so wrapping changes nothing else."""
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


def crashing(channels, after: int):
    """A flow's ``Channels`` (``caldicott.letters.flow.Channels``) with every sender in :class:`CrashAfter`."""
    return dataclasses.replace(channels, senders={k: CrashAfter(s, after) for k, s in channels.senders.items()})


# ---- the e2e switch (test process side) ------------------------------------------------------------------

def e2e_airflow_env(env: dict[str, str], control: Path) -> dict[str, str]:
    """``env`` for the e2e Airflow with the worker-side hook on its PYTHONPATH and ``control`` as its switch."""
    path = os.pathsep.join(p for p in (str(WORKER_SITE), env.get("PYTHONPATH", "")) if p)
    return {**env, "PYTHONPATH": path, CONTROL_ENV: str(control)}


def arm(control: Path, *, dag_id: str, task_id: str, run_id: str, after_sends: int) -> None:
    """Every ``task_id`` task instance of run ``run_id`` crashes after ``after_sends`` sends per release."""
    spec = {"dag_id": dag_id, "task_id": task_id, "run_id": run_id, "after_sends": after_sends}
    tmp = control.with_suffix(".tmp")
    tmp.write_text(json.dumps(spec))
    tmp.replace(control)   # the workers never read half a file


def disarm(control: Path) -> None:
    control.unlink(missing_ok=True)


def fired_log(control: Path) -> Path:
    return control.with_name(control.name + ".fired")


def fired(control: Path) -> list[dict]:
    """One entry per release the hook crashed: ``dag_id``, ``task_id``, ``run_id``, ``try_number``, ``channel``,
    ``after_sends`` (written by the worker as it crashes)."""
    log = fired_log(control)
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
