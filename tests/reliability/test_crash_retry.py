"""Crash and retry (issue 8, part 2): SIGKILL a flow step at chosen points, re-run it, and check the
PEERS' own records — the SMTP server's stored messages, the MESH recipient's inbox, the SFTP directory,
the staging folder — for every planned item delivered exactly once and none lost.

Each step runs in a forked child of ``runner.py`` (a separate process) which kills itself with SIGKILL
at the kill point (see the runner's docstring for the points). The re-run is another child without a
kill point; a further re-run must then send nothing.

SMTP is the one channel that cannot be asked whether a message arrived: a kill after the server's 250
and before the ledger commit is healed by a resend with the same deterministic Message-ID. There,
"exactly once" counts distinct Message-IDs, and the raw duplicates that window produced are counted and
asserted exactly (one per such kill), not hidden.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
from pathlib import Path

import pytest
from caldicott.dataset import pipeline
from caldicott.dataset.builder import Period
from caldicott.letters import flow
from caldicott.letters.messages import message_id
from caldicott.transport.ledger import DONE, Ledger, item_id
from caldicott.updates import deliver

from devtools.peers.sftp import SftpPeer
from devtools.peers.smtp import SmtpPeer

from .conftest import KILLED, figure, finish_mesh_letters, gp_inbox, new_state


def _month(key: str) -> tuple[dt.date, dt.date]:
    y, m = (int(x) for x in key.split("-"))
    first = dt.date(y, m, 1)
    return first, (first.replace(day=28) + dt.timedelta(days=4)).replace(day=1)


def _plan_batch(records, state, month: str, batch_id: str) -> dict:
    start, end = _month(month)
    planned = flow.plan(records, state, start, end, month)
    (batch,) = [b for b in planned["batches"] if b["batch_id"] == batch_id]
    return batch


def _letter_ids(batch: dict) -> set[str]:
    return {flow.letter_id(r, e, batch["kind"]) for r, e in batch["letters"]}


def _run_until_done(zygote, job: dict, kills: list[dict]) -> tuple[int, dict, dict]:
    """The kill points survived, the completing run's result and the extra run's (:meth:`Zygote.survive`)."""
    return len(kills), *zygote.survive(job, kills)


# ---- GP letters over SMTP (S/MIME e-mail) -----------------------------------------------------------

SMTP_MONTH, SMTP_BATCH = "2026-10", "2026-10/gp/smime-email/Z84003"

SMTP_CASES = [  # (kill points in order, raw duplicates the dangerous window must produce)
    ([{"at": "after_intent", "n": 1}], 0),
    ([{"at": "before_send", "n": 1}], 0),
    ([{"at": "before_send", "n": 5}], 0),
    ([{"at": "mid_send", "n": 3}], 0),
    ([{"at": "after_send", "n": 1}], 1),
    ([{"at": "after_send", "n": 9}], 1),
    ([{"at": "after_mark", "n": 4}], 0),
]


@pytest.mark.parametrize(("kills", "dups"), SMTP_CASES, ids=lambda v: v if isinstance(v, int) else
                         "+".join(f"{k['at']}{k['n']}" for k in v))
def test_letters_smtp_killed_and_rerun(kills, dups, zygote, synth_source, smtp_planned, tmp_path):
    if kills[0]["at"] == "after_intent":   # the child plans (and dies right after recording intents)
        url, state = new_state(tmp_path)
        batch = smtp_planned["batch"]
    else:
        url, state, batch = _copy_planned(smtp_planned, tmp_path)
    with SmtpPeer(tmp_path / "smtp") as smtp:
        start, end = _month(SMTP_MONTH)
        job = {"flow": "letters", "records_url": synth_source.url, "state_url": url, "batch": batch,
               "start": start, "end": end, "run_key": SMTP_MONTH, "smtp_port": smtp.port,
               "plan": kills[0]["at"] == "after_intent"}
        survived, result, again = _run_until_done(zygote, job, kills)
        ids = _letter_ids(batch)
        msgs = smtp.messages()
    assert result["failed"] == 0 and result["refused"] == 0
    assert again["sent"] == 0 and again["already_sent"] == len(ids)
    got = [m["Message-ID"] for m in msgs]
    assert set(got) == {message_id(i) for i in ids}, "a planned letter is missing at the SMTP server"
    raw_dups = len(got) - len(set(got))
    assert raw_dups == dups, f"{raw_dups} raw duplicate(s) at the SMTP server, expected {dups}"
    entries = Ledger(state).entries(sorted(ids))
    assert all(e.state in DONE for e in entries.values()) and len(entries) == len(ids)
    figure("kill points survived", survived)
    figure("kill points survived: gp letters smtp", survived)
    figure("smtp raw duplicates from the dangerous window", raw_dups)
    print(f"smtp {kills}: {len(ids)} letters, {len(set(got))} distinct Message-IDs, {raw_dups} raw duplicate(s)")


@pytest.fixture(scope="module")
def smtp_planned(synth_source, tmp_path_factory) -> dict:
    """The SMTP month planned once into a template state database; cases copy it (planning is idempotent)."""
    root = tmp_path_factory.mktemp("smtp-plan")
    _, state = new_state(root)
    batch = _plan_batch(synth_source.engine, state, SMTP_MONTH, SMTP_BATCH)
    with state.begin() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    state.dispose()
    return {"path": root / "state.db", "batch": batch}


def _copy_planned(planned: dict, tmp_path: Path):
    from caldicott.db import make_engine, sqlite_url

    shutil.copy(planned["path"], tmp_path / "state.db")
    url = sqlite_url(tmp_path / "state.db")
    return url, make_engine(url), planned["batch"]


# ---- GP letters over MESH (GP Connect Send Document) -------------------------------------------------

MESH_CASES = [  # (month, batch, kill points): distinct letters per case, because the sandbox is shared
    ("2026-05", "2026-05/gp/mesh/Z84002", [{"at": "before_send", "n": 1}]),
    ("2026-06", "2026-06/gp/mesh/Z84002", [{"at": "after_send", "n": 2}]),
    ("2026-08", "2026-08/gp/mesh/Z84001", [{"at": "after_mark", "n": 2}]),
    ("2026-10", "2026-10/gp/mesh/Z84002", [{"at": "after_send", "n": 1}, {"at": "reconcile", "n": 1}]),
    ("2026-10", "2026-10/gp/mesh/Z84001", [{"at": "after_send", "n": 1}] * 9),  # one more item per life
]


@pytest.mark.parametrize(("month", "batch_id", "kills"), MESH_CASES,
                         ids=["before_send1", "after_send2", "after_mark2", "after_send1+reconcile1",
                              "after_send1x9"])
def test_letters_mesh_killed_and_rerun(month, batch_id, kills, zygote, mesh_peer, synth_source, tmp_path):
    url, state = new_state(tmp_path)
    batch = _plan_batch(synth_source.engine, state, month, batch_id)
    start, end = _month(month)
    s = mesh_peer.settings(mesh_peer.SENDER_MAILBOX)
    job = {"flow": "letters", "records_url": synth_source.url, "state_url": url, "batch": batch, "start": start,
           "end": end, "run_key": month, "mesh": s.__dict__}
    for kill in kills:
        rc, result = zygote.run({**job, "kill": kill})
        assert rc == KILLED, (kill, rc, result)
    ids = _letter_ids(batch)
    # one connection: every kill lands before a request or after MESH's answer was journalled, never mid-request,
    # so nothing should end as "outcome unknown" here (test_crash_concurrent_sends.py kills mid-request)
    held = finish_mesh_letters(zygote, job, state, mesh_peer, ids)
    got = gp_inbox(mesh_peer, ids)
    assert sorted(got) == sorted(ids), "MESH inbox does not hold every planned letter exactly once"
    assert held["outcome_unknown"] == 0, held
    figure("kill points survived", len(kills))
    figure("kill points survived: gp letters mesh", len(kills))
    print(f"mesh {batch_id} {len(kills)} kill(s): {len(ids)} letters, {len(got)} in the GP inbox, 0 duplicates")


# ---- referrer updates over SFTP ----------------------------------------------------------------------

DAY = dt.date(2026, 10, 31)
SFTP_CASES = [
    [{"at": "after_intent", "n": 1}],
    [{"at": "before_send", "n": 1}],
    [{"at": "mid_send", "n": 1}],
    [{"at": "mid_send", "n": 2}],
    [{"at": "after_send", "n": 1}],
    [{"at": "after_send", "n": 2}],
    [{"at": "after_mark", "n": 1}],
    [{"at": "after_send", "n": 1}, {"at": "reconcile", "n": 1}],
]


@pytest.fixture(scope="module")
def sftp_contract(synth_source) -> str:
    contracts = synth_source.result.frames["contract"]
    return str(contracts.loc[contracts["transport"] == "sftp", "contract_id"].iloc[0])


@pytest.mark.parametrize("kills", SFTP_CASES, ids=lambda v: "+".join(f"{k['at']}{k['n']}" for k in v))
def test_referrer_updates_sftp_killed_and_rerun(kills, zygote, synth_source, sftp_contract, tmp_path):
    url, state = new_state(tmp_path)
    with SftpPeer(tmp_path / "peer") as peer:
        job = {"flow": "updates", "records_url": synth_source.url, "state_url": url, "contract_id": sftp_contract,
               "first": DAY, "end": DAY + dt.timedelta(days=1), "run_key": DAY.isoformat(),
               "activity_month": dt.date(2026, 10, 1),
               "sftp": {"port": peer.port, "username": peer.username, "password": peer.password,
                        "host_key": peer.host_key_line}}
        survived, result, again = _run_until_done(zygote, job, kills)
        files = sorted(p for p in peer.root.rglob("*") if p.is_file())
    assert "error" not in result, result
    assert again["files"] == {"sessions": "already_sent", "activity": "already_sent"}
    names = sorted(p.name for p in files)
    assert names == sorted([deliver.file_name(sftp_contract, "sessions", DAY.isoformat(), encrypted=False),
                            deliver.file_name(sftp_contract, "activity", "2026-10", encrypted=False)]), names
    led = Ledger(state)
    for kind, period in (("sessions", DAY.isoformat()), ("activity", "2026-10")):
        e = led.get(item_id("referrer_updates", sftp_contract, kind, period))
        assert e is not None and e.state in DONE
        (p,) = [f for f in files if f"_{kind}_" in f.name]
        assert hashlib.sha256(p.read_bytes()).hexdigest() == e.checksum, "the file at the peer is not the one sent"
    figure("kill points survived", survived)
    figure("kill points survived: referrer updates sftp", survived)
    print(f"sftp {kills}: 2 files, each once, no .part left")


# ---- monthly data set staging -----------------------------------------------------------------------

OCT = Period.month(2026, 10)
KEY = bytes(range(32))


@pytest.fixture(scope="module")
def dataset_written(synth_source, tmp_path_factory):
    """The month built, validated and written once; each case copies its state database."""
    root = tmp_path_factory.mktemp("dataset")
    _url, state = new_state(root)
    s = pipeline.Settings(org_provider="ZZZ01", work_dir=root / "work", key=KEY)
    pipeline.build_validate_write(synth_source.engine, state, OCT, s)
    numbers = set(pipeline.mpi_numbers(state, OCT, s))
    extract, _ = pipeline.planning_extract(state, OCT, s, set(), numbers, "test")
    (root / "extract.bin").write_bytes(extract.payload)
    state.dispose()
    return {"state": root / "state.db", "work_dir": root / "work", "blob": root / "extract.bin"}


STAGING_CASES = [
    [{"at": "after_intent", "n": 1}],
    [{"at": "before_send", "n": 1}],
    [{"at": "mid_send", "n": 1}],
    [{"at": "before_rename", "n": 2}],
    [{"at": "after_send", "n": 1}],
    [{"at": "after_mark", "n": 2}],
]


@pytest.mark.parametrize("kills", STAGING_CASES, ids=lambda v: "+".join(f"{k['at']}{k['n']}" for k in v))
def test_dataset_staging_killed_and_rerun(kills, zygote, dataset_written, tmp_path):
    from caldicott.db import make_engine, sqlite_url

    shutil.copy(dataset_written["state"], tmp_path / "state.db")
    url = sqlite_url(tmp_path / "state.db")
    staging = tmp_path / "staging"
    job = {"flow": "dataset", "state_url": url, "month": OCT.key, "work_dir": dataset_written["work_dir"],
           "key_hex": KEY.hex(), "staging": staging, "extract_blob": dataset_written["blob"]}
    survived, _result, again = _run_until_done(zygote, job, kills)
    assert again["submission"]["already_sent"] == 1 and again["extract"]["already_sent"] == 1
    assert again["submission"]["sent"] == 0 and again["extract"]["sent"] == 0
    files = {str(p.relative_to(staging)): p for p in staging.rglob("*") if p.is_file()}
    archive = next(Path(dataset_written["work_dir"], OCT.key).glob("*.zip.enc"))
    assert sorted(files) == sorted([f"{OCT.key}/{archive.name}",
                                    f"{OCT.key}/commissioner/commissioner_extract_{OCT.key}.csv.enc"]), files
    assert files[f"{OCT.key}/{archive.name}"].read_bytes() == archive.read_bytes()
    assert files[f"{OCT.key}/commissioner/commissioner_extract_{OCT.key}.csv.enc"].read_bytes() == \
        Path(dataset_written["blob"]).read_bytes()
    led = Ledger(make_engine(url))
    for what in ("submission", "commissioner_extract"):
        assert led.get(item_id(pipeline.FLOW, OCT.key, what)).state in DONE
    figure("kill points survived", survived)
    figure("kill points survived: data set staging", survived)
    print(f"staging {kills}: 2 files, each once, whole, no .part left")


def test_dataset_build_killed_then_staged_whole(zygote, synth_source, tmp_path):
    """Kills inside the build (half-written archive; archive written but not registered), then build + stage."""
    from caldicott.dataset import state_tables
    from caldicott.dataset.writer import read_archive

    url, state = new_state(tmp_path)
    work, staging = tmp_path / "work", tmp_path / "staging"
    job = {"flow": "dataset_build", "records_url": synth_source.url, "state_url": url, "month": OCT.key,
           "work_dir": work, "key_hex": KEY.hex(), "staging": staging}
    rc, _ = zygote.run({**job, "kill": {"at": "mid_archive", "n": 1}})
    parts = list(work.rglob("*.zip.enc.part"))
    assert rc == KILLED and len(parts) == 1 and state_tables.get(state, OCT.key) is None, (rc, parts)
    assert not list(work.rglob("*.zip.enc")), "a half archive is visible under its final name"
    kills = [{"at": "before_register", "n": 1}]
    survived, result, again = _run_until_done(zygote, job, kills)
    survived += 1
    kills = [{"at": "mid_archive", "n": 1}, *kills]
    assert result["stage"]["sent"] == 1 and again["stage"]["already_sent"] == 1
    assert again["build"]["rebuilt"] is False
    staged = [p for p in staging.rglob("*") if p.is_file()]
    assert len(staged) == 1 and not list(work.rglob("*.part")), (staged, list(work.rglob("*.part")))
    row = state_tables.get(state, OCT.key)
    assert staged[0].read_bytes() == Path(row["archive_path"]).read_bytes()
    tables = read_archive(staged[0], KEY)
    assert {k: len(v) for k, v in tables.items() if k in row["row_counts"]} == row["row_counts"]
    assert Ledger(state).get(item_id(pipeline.FLOW, OCT.key, "submission")).state in DONE
    figure("kill points survived", survived)
    figure("kill points survived: data set build", survived)
    print(f"data set build {kills}: one archive staged, whole, decrypts to the registered row counts")
