"""Fixtures of the reliability tier: a zygote that runs flow steps in killable child processes, a MESH
sandbox for the session, fresh state databases, and a figures board printed at the end of the run.

The flows are driven through their domain functions (``caldicott.letters.flow``, ``caldicott.updates.deliver``,
``caldicott.dataset.pipeline``) against the real loopback peers of ``devtools/peers``; the Airflow
scheduler is not involved here (``tests/e2e`` covers it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections import defaultdict
from pathlib import Path

import pytest
from caldicott.db import make_engine, sqlite_url
from caldicott.state.migrate import migrate

from devtools.peers.mesh import MeshPeer

RUNNER = Path(__file__).with_name("runner.py")
ROOT = Path(__file__).resolve().parents[2]

#: figure name -> value, filled by the tests, printed in the terminal summary (and copied by hand into
#: docs/reliability.md).
FIGURES: dict[str, int] = defaultdict(int)


def figure(name: str, value: int = 1) -> None:
    FIGURES[name] += value


def pytest_terminal_summary(terminalreporter):
    if FIGURES:
        terminalreporter.section("reliability figures")
        for name in sorted(FIGURES):
            terminalreporter.write_line(f"{name}: {FIGURES[name]}")


class Zygote:
    """``run(job) -> (rc, result)``: one flow step in a forked child of ``runner.py --serve``."""

    def __init__(self, workdir: Path) -> None:
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        env.pop("PYTEST_CURRENT_TEST", None)
        self.workdir = workdir
        self.err = open(workdir / "zygote.stderr", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, str(RUNNER), "--serve"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.err, cwd=str(ROOT), env=env, text=True)
        self.lock = threading.Lock()
        self.jobs = 0
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.stop()
            raise RuntimeError(f"runner zygote did not start; see {workdir / 'zygote.stderr'}")

    def run(self, job: dict) -> tuple[int, dict | None]:
        with self.lock:
            self.jobs += 1
            job = {"result_path": str(self.workdir / f"result-{self.jobs}.json"), **job}
            self.proc.stdin.write(json.dumps(job, default=str) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"runner zygote died; see {self.workdir / 'zygote.stderr'}")
        reply = json.loads(line)
        return reply["rc"], reply["result"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.err.close()


@pytest.fixture(scope="session")
def zygote(tmp_path_factory):
    z = Zygote(tmp_path_factory.mktemp("zygote"))
    try:
        yield z
    finally:
        z.stop()


@pytest.fixture(scope="session")
def mesh_peer(tmp_path_factory):
    with MeshPeer(tmp_path_factory.mktemp("mesh")) as peer:
        yield peer


def new_state(folder: Path, name: str = "state.db"):
    """A fresh migrated SQLite state database: (url, engine)."""
    folder.mkdir(parents=True, exist_ok=True)
    url = sqlite_url(folder / name)
    engine = make_engine(url)
    migrate(engine)
    return url, engine


def gp_inbox(mesh_peer, ids: set[str]) -> list[str]:
    """local_ids of the messages in the GP practices' inbox that belong to ``ids`` (then acknowledged)."""
    found = []
    with mesh_peer.client(mesh_peer.GP_MAILBOX) as gp:
        for mid in gp.list_messages():
            msg = gp.retrieve_message(mid)
            if msg.local_id in ids:
                found.append(msg.local_id)
                gp.acknowledge_message(mid)
            msg.close()
    return found
