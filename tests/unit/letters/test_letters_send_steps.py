"""A batch reads its letters from the source a step at a time while the letters before are rendered and sent
(issue 13): the same letters, in the same order, each rendered PDF with its own letter, each letter sent once."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import deque
from types import SimpleNamespace

from caldicott.letters import flow, render_pool
from caldicott.letters.build import find_events, load_letters

from tests.recorder import Recorder

START, END = dt.date(2025, 6, 1), dt.date(2026, 8, 1)


def test_letters_read_in_steps_are_the_letters_read_at_once(synth_source, monkeypatch):
    records = synth_source.engine
    events = find_events(records, START, END)
    monkeypatch.setattr(flow, "LOAD_FIRST", 7)
    monkeypatch.setattr(flow, "LOAD_STEP", 31)
    stepped = list(flow._load_in_steps(records, events))
    at_once = load_letters(records, events)
    assert len(at_once) > 100 and any(lt.problems for lt in at_once)   # record faults land in some steps
    assert [dataclasses.asdict(lt) for lt in stepped] == [dataclasses.asdict(lt) for lt in at_once]


def test_each_pdf_goes_with_its_own_letter_and_letters_are_read_as_needed(monkeypatch):
    letters = [SimpleNamespace(referral_id=f"R{i}") for i in range(50)]
    read: list[str] = []

    def source():
        for letter in letters:
            read.append(letter.referral_id)
            yield letter

    def due(ls, kind, channel, ch, skip):   # some letters are not due (the record changed since planning)
        for letter in ls:
            if not letter.referral_id.endswith("3"):
                yield letter, f"id-{letter.referral_id}", None

    def renderer(jobs, service, *, count=None):   # asks for its jobs 8 ahead, like the render worker's window
        ahead: deque = deque()
        for job in jobs:
            ahead.append(job)
            if len(ahead) == 8:
                letter, kind = ahead.popleft()
                yield f"{letter.referral_id}/{kind}".encode(), dt.datetime.now(dt.UTC)
        while ahead:
            letter, kind = ahead.popleft()
            yield f"{letter.referral_id}/{kind}".encode(), dt.datetime.now(dt.UTC)

    monkeypatch.setattr(flow, "_due", due)
    monkeypatch.setattr(render_pool, "render_pdfs", renderer)
    monkeypatch.setattr(flow, "email_body", lambda service: "")
    monkeypatch.setattr(flow, "_protect", lambda letter, lid, d, pdf, now, *rest: (lid, pdf))
    items = flow.outbound_items(source(), "gp", "post", "b", SimpleNamespace(service=None), set(), count=50)
    first = next(items)
    assert first == ("id-R0", b"R0/gp")
    assert len(read) < 15, "the letters were read before the first one was needed"
    expected = [(f"id-R{i}", f"R{i}/gp".encode()) for i in range(50) if i % 10 != 3]
    assert [first, *items] == expected


def test_a_batch_read_in_steps_sends_each_planned_letter_once_in_order(synth_source, state_engine, service,
                                                                       monkeypatch):
    records = synth_source.engine
    planned = flow.plan(records, state_engine, START, END, "steps")
    batch = max((b for b in planned["batches"] if b["channel"] != "post"), key=lambda b: len(b["letters"]))
    assert len(batch["letters"]) > 20
    monkeypatch.setattr(flow, "LOAD_FIRST", 3)
    monkeypatch.setattr(flow, "LOAD_STEP", 7)
    rec = Recorder(batch["channel"])
    ch = flow.Channels({"smtp": rec, "mesh": rec}, service, "letters@nhs.example", sender_mailbox="X26ABC1")
    out = flow.send_batch(records, state_engine, batch, ch, START, END, chunk=5)
    ids = [flow.letter_id(r, e, batch["kind"]) for r, e in sorted(tuple(x) for x in batch["letters"])]
    assert out["failed"] == 0 and out["sent"] == len(ids) == len(rec.items)
    assert [i.item_id for i in rec.items] == ids
    again = flow.send_batch(records, state_engine, batch, ch, START, END, chunk=5)
    assert again["sent"] == 0 and again["already_sent"] == len(ids)
