"""GP letters declare where they go: the practice's country (``gp_practice.country``) on the GP copy, the relay's /
MESH's / print house's on the rest (the connections' ``country`` extra, default GB). The release gateway checks them
against the adequacy list, so a practice outside it gets no letter and the ledger records the refusal."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

from caldicott.db import make_engine, sqlite_url
from caldicott.letters import flow
from caldicott.letters.build import find_events, load_letters
from caldicott.policy import adequacy
from caldicott.transport.ledger import Ledger, ledger
from sqlalchemy import select

from tests.recorder import Recorder
from tests.unit.transfers.source import copy_source

START, END = dt.date(2025, 6, 1), dt.date(2026, 8, 1)


def test_a_practice_outside_the_adequacy_list_gets_no_letter_and_the_ledger_says_why(synth_source, state_engine,
                                                                                        service, tmp_path):
    db = copy_source(Path(make_engine(synth_source.url).url.database), tmp_path / "records.db")
    records = make_engine(sqlite_url(db))
    # the busiest practice on S/MIME e-mail moves abroad, outside the list; the others stay in GB
    letters = load_letters(records, find_events(records, START, END))
    counts: dict[str, int] = {}
    for lt in letters:
        if lt.practice and lt.practice.get("channel") == "smime-email" and not lt.problems:
            counts[lt.practice["ods_code"]] = counts.get(lt.practice["ods_code"], 0) + 1
    abroad = max(counts, key=counts.get)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE gp_practice SET country = 'US' WHERE ods_code = ?", (abroad,))
    assert "US" not in adequacy.adequate_countries()

    planned = flow.plan(records, state_engine, START, END, "adequacy")
    rec = {"smtp": Recorder("smime-email")}
    ch = flow.Channels(rec, service, "letters@nhs.example", relay_country="GB")
    gp_batches = [b for b in planned["batches"] if b["kind"] == "gp" and b["channel"] == "smime-email"]
    results = {b["batch_id"]: flow.send_batch(records, state_engine, b, ch, START, END) for b in gp_batches}

    refused_batch = results[f"adequacy/gp/smime-email/{abroad}"]
    assert refused_batch["sent"] == 0 and refused_batch["refused"] > 0 and refused_batch["failed"] == 0
    sent = {i.item_id: i for i in rec["smtp"].items}
    # no letter to the practice abroad; every other practice's letters went, declaring GB and the relay
    assert all(i.headers["country"] == "GB" and i.headers["via_country"] == "GB" for i in sent.values())
    assert all(r["sent"] > 0 for bid, r in results.items() if not bid.endswith(abroad))
    with state_engine.connect() as conn:
        rows = conn.execute(select(ledger.c.item_id, ledger.c.state, ledger.c.detail).where(
            ledger.c.item_id.in_(refused_batch["refused_ids"]))).all()
    assert len(rows) == refused_batch["refused"]
    for item_id, state, detail in rows:
        assert item_id not in sent and state == "held"
        assert "US not on the adequacy list" in detail
    # a re-run does not send it either (held: a person decides)
    batch = next(b for b in gp_batches if b["batch_id"].endswith(abroad))
    again = flow.send_batch(records, state_engine, batch, ch, START, END)
    assert again["sent"] == 0 and Ledger(state_engine).get(rows[0][0]).state == "held"
    assert not any(i.item_id == rows[0][0] for i in rec["smtp"].items)


def test_the_run_report_counts_what_any_try_of_the_run_sent(synth_source, state_engine, service):
    """A batch whose first try sent some letters and failed reports only its last try; the run's report counts
    from the ledger: delivered since the run started = sent by this run, delivered before = already sent."""
    records = synth_source.engine
    start, end = dt.date(2026, 6, 1), dt.date(2026, 7, 1)
    planned = flow.plan(records, state_engine, start, end, "retry")
    batch = next(b for b in planned["batches"] if b["channel"] == "smime-email")
    rec = {"smtp": Recorder("smime-email")}
    ch = flow.Channels(rec, service, "letters@nhs.example")
    before = dt.datetime.now(dt.UTC)
    first = {**batch, "letters": batch["letters"][:2]}          # "try 1": two letters, then it failed
    assert flow.send_batch(records, state_engine, first, ch, start, end)["sent"] == 2
    retry = flow.send_batch(records, state_engine, batch, ch, start, end)
    assert retry["already_sent"] == 2                              # the retry's own XCom
    n = len(batch["letters"])
    assert flow.sent_by_run(state_engine, [batch], before) == {"sent": n, "already_sent": 0}
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)      # a re-run of the interval: all done before it
    assert flow.sent_by_run(state_engine, [batch], later) == {"sent": 0, "already_sent": n}


def test_every_channel_declares_its_countries(synth_source, service):
    """The GP copy carries the practice's country; patient copies the intermediary's (relay, print house)."""
    from caldicott.letters.flow import _protect

    records = synth_source.engine
    letters = load_letters(records, find_events(records, dt.date(2026, 6, 1), dt.date(2026, 8, 1)))
    ch = flow.Channels({}, service, "letters@nhs.example", print_certificate_pem=_pem(), relay_country="IE",
                       print_country="FR")
    seen = set()
    for lt in letters:
        gp, pat = flow.decide(lt)
        for kind, d in (("gp", gp), ("patient", pat)):
            if d.outcome != "send" or d.route is None or d.route.channel == "mesh":
                continue
            lid = flow.letter_id(lt.referral_id, lt.event, kind)
            item = _protect(lt, lid, d, b"%PDF-1.4 x", dt.datetime.now(dt.UTC), kind, d.route.channel,
                            "b", ch, "body")
            want = {"smime-email": ("GB", "IE"), "secure-email": ("IE", None), "smime": ("IE", None),
                    "post": ("FR", None)}[d.route.channel]
            assert (item.headers.get("country"), item.headers.get("via_country")) == want, d.route.channel
            seen.add(d.route.channel)
    assert {"smime-email", "secure-email", "post"} <= seen


def _pem() -> str:
    from caldicott.crypto.keys import make_identity

    return make_identity("print house").cert_pem.decode()
