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

#: figure name -> value, filled by the tests and printed in the terminal summary. When the whole directory ran
#: and passed, the totals the docs quote are checked against them (:func:`pytest_sessionfinish`): a figure in
#: the README or docs/reliability.md that no longer matches the suite fails the run instead of going stale.
FIGURES: dict[str, int] = defaultdict(int)
HERE = Path(__file__).parent
#: (file, regex whose group 1 is the quoted total) for each place the docs quote the kill-point total
DOC_KILL_TOTALS = (
    (ROOT / "README.md", r"^\| kill points survived[^|]*\| (\d+) "),
    (ROOT / "docs" / "reliability.md", r"^\| kill points survived[^|]*\| \*\*(\d+)\*\*"),
)
_outcomes: dict[str, str] = {}


def figure(name: str, value: int = 1) -> None:
    FIGURES[name] += value


def pytest_terminal_summary(terminalreporter):
    if FIGURES:
        terminalreporter.section("reliability figures")
        for name in sorted(FIGURES):
            terminalreporter.write_line(f"{name}: {FIGURES[name]}")
    for problem in _doc_problems:
        terminalreporter.write_line(f"reliability figures: {problem}", red=True)


def pytest_runtest_logreport(report):
    if report.when == "call" or report.outcome != "passed":
        _outcomes[report.nodeid] = report.outcome


_doc_problems: list[str] = []


def doc_kill_totals() -> dict[str, int | None]:
    """The kill-point total each doc quotes (None where the row is missing)."""
    import re

    out: dict[str, int | None] = {}
    for path, pattern in DOC_KILL_TOTALS:
        m = re.search(pattern, path.read_text(encoding="utf-8"), re.MULTILINE)
        out[str(path.relative_to(ROOT))] = int(m.group(1)) if m else None
    return out


def pytest_sessionfinish(session, exitstatus):
    """Fail a run of the whole reliability directory whose kill-point total differs from what the docs quote.

    Only a complete, green run counts (every test of this directory collected, none deselected by -k/-m, all
    passed): a partial run's totals are partial by design."""
    ours = [item for item in session.items if Path(str(item.fspath)).is_relative_to(HERE)]
    opts = session.config.option
    complete = (ours and exitstatus == 0 and not getattr(opts, "keyword", "") and not getattr(opts, "markexpr", "")
                and {Path(str(i.fspath)).name for i in ours} == {p.name for p in HERE.glob("test_*.py")}
                and all(_outcomes.get(i.nodeid) == "passed" for i in ours))
    if not complete:
        return
    total = FIGURES.get("kill points survived", 0)
    for doc, quoted in doc_kill_totals().items():
        if quoted != total:
            _doc_problems.append(f"{doc} quotes {quoted} kill points survived; this run survived {total}: "
                                 "update the figure (and its breakdown) from the summary above")
    if _doc_problems:
        session.exitstatus = 1


#: The return code of a child that the job's kill point SIGKILLed.
KILLED = -9


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

    def survive(self, job: dict, kills: list[dict]) -> tuple[dict, dict]:
        """Run ``job`` once per kill point (each must die by SIGKILL), then to completion, then once more.

        Returns the completing run's result and the extra run's (which the caller checks sent nothing twice)."""
        for kill in kills:
            rc, result = self.run({**job, "kill": kill})
            assert rc == KILLED, (kill, rc, result)
        rc, done = self.run(job)
        assert rc == 0, done
        rc, again = self.run(job)
        assert rc == 0, again
        return done, again

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


def letter_of(msg) -> str:
    """The letter id a GP Connect message carries: its MESH file name, ``<letter id>.json``. Send Document's
    ``Mex-LocalID`` is the sender's ODS code (GPCM-SD-146), the same for every letter, so it tells none apart."""
    return str(getattr(msg, "filename", "") or "").removesuffix(".json")


def gp_inbox_by_letter(mesh_peer, ids: set[str]) -> dict[str, list[str]]:
    """Letter id (from the MESH file name) -> the MESH message ids carrying it in the GP practices' inbox, for the
    letters in ``ids`` (a letter delivered twice has two); those messages are then acknowledged, so the next case
    starts from an empty inbox."""
    found: dict[str, list[str]] = {}
    with mesh_peer.client(mesh_peer.GP_MAILBOX) as gp:
        for mid in gp.list_messages():
            msg = gp.retrieve_message(mid)
            letter = letter_of(msg)
            msg.close()
            if letter in ids:
                found.setdefault(letter, []).append(mid)
                gp.acknowledge_message(mid)
    return found


def gp_inbox(mesh_peer, ids: set[str]) -> list[str]:
    """The letter ids of :func:`gp_inbox_by_letter`, one entry per message (a letter delivered twice appears twice)."""
    return [letter for letter, mids in gp_inbox_by_letter(mesh_peer, ids).items() for _ in mids]


def outcome_unknown(state, ids) -> dict[str, str]:
    """Items the flow holds for a person to look up in MESH. Item id -> reason. Two kinds, both ``failed`` in the
    ledger, never resent by the flow itself:

    * "MESH outcome unknown": journalled ``posting`` with no MESH message id (a request left, MESH's answer was
      never recorded);
    * "MESH no longer knows message": journalled ``accepted`` with the id MESH returned more than 5 days ago, and
      MESH's tracking answers 404 for it (within 5 days a 404 means MESH holds no such message: the flow resends)."""
    from caldicott.transport.ledger import State, ledger
    from caldicott.transport.mesh_journal import ACCEPTED, POSTING, MeshJournal
    from sqlalchemy import select

    journal = MeshJournal(state)
    with state.connect() as conn:
        rows = conn.execute(select(ledger.c.item_id, ledger.c.state, ledger.c.detail)
                            .where(ledger.c.item_id.in_(sorted(ids)))).all()
    held = {}
    for item, st, detail in rows:
        entry = journal.lookup(item)
        if st != State.FAILED.value or entry is None:
            continue
        unknown = "MESH outcome unknown" in (detail or "") and entry.state == POSTING and entry.message_id is None
        untracked = "MESH no longer knows message" in (detail or "") and entry.state == ACCEPTED and entry.message_id
        if unknown or untracked:
            held[item] = detail
    return held


def resolve_as_a_person(state, mesh_peer, ids) -> dict[str, str | None]:
    """Do what the runbook asks of a person for each letter held as "MESH outcome unknown": look the letter up in
    MESH (production: MOLES; here the sandbox's record of the recipient's inbox, by the letter id in the file name,
    without collecting anything) and record the answer with ``MeshJournal.resolve``: the message id found, or None
    if MESH never got it (the next run then sends it). Returns item id -> the answer recorded."""
    from caldicott.transport.mesh_journal import MeshJournal

    unknown = set(ids)
    found: dict[str, str] = {}
    with mesh_peer.client(mesh_peer.GP_MAILBOX) as gp:
        for mid in gp.list_messages():
            msg = gp.retrieve_message(mid)
            letter = letter_of(msg)
            msg.close()
            if letter in unknown:
                assert letter not in found, f"{letter} is in MESH twice"
                found[letter] = mid
    journal = MeshJournal(state)
    answers = {item: found.get(item) for item in sorted(unknown)}
    for item, message_id in answers.items():
        journal.resolve(item, message_id)
    return answers


def finish_mesh_letters(zygote, job: dict, state, mesh_peer, ids: set[str]) -> dict[str, int]:
    """After the kills: run the MESH letters step to completion, honestly, then once more (which must send nothing).

    A kill while a request is on its way to MESH (another connection's send when one thread's kill takes the
    process down) leaves a letter MESH may or may not hold. The flow must not guess: the completing run fails
    exactly those letters as "MESH outcome unknown" (held in the ledger with the reason, journalled without a
    message id) and delivers or reconciles every other one. A person then looks each one up in MESH and records
    the answer (:func:`resolve_as_a_person`); the next run sends only what MESH never got, once.
    Returns counts for the figures board."""
    from caldicott.transport.ledger import DONE, Ledger

    rc, done = zygote.run(job)
    assert rc == 0, done
    held = outcome_unknown(state, ids)
    assert set(done["failed_ids"]) == set(held), "a letter failed for a reason other than one held for a person"
    entries = Ledger(state).entries(sorted(ids))
    assert len(entries) == len(ids) and all(entries[i].state in DONE for i in ids - set(held)), \
        "a letter is neither delivered nor held as outcome unknown"
    answers: dict[str, str | None] = {}
    if held:
        answers = resolve_as_a_person(state, mesh_peer, held)
        rc, after = zygote.run(job)
        assert rc == 0 and after["failed"] == 0, after
        assert after["sent"] == sum(a is None for a in answers.values()), "resent a letter MESH already held"
    rc, again = zygote.run(job)
    assert rc == 0 and again["sent"] == 0 and again["already_sent"] == len(ids), again
    return {"outcome_unknown": len(held), "found_in_mesh": sum(a is not None for a in answers.values())}
