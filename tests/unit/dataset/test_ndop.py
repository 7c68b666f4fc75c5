"""National data opt-out: request format and facts, HMAC keying, the sealed request, the time-limited cache and its
purge, the reusable filter. The service is the in-memory test double of devtools/, injected here (the MESH
round trip is tests/peers/test_ndop_mesh.py; the gateway and crash cases tests/unit/test_ndop_gateway.py)."""

from __future__ import annotations

import datetime as dt
import hashlib

import pandas as pd
import pytest
from caldicott.db import utcnow
from caldicott.policy import ndop_cache
from caldicott.policy.evidence import establish
from caldicott.policy.ndop import (
    NdopError,
    NdopKeyMissing,
    filter_opted_out,
    opted_out_from,
    request_bytes,
    request_facts,
    where_applied,
)
from caldicott.policy.ndop_check import NdopChecker
from caldicott.policy.state_tables import ndop_cache as cache_table
from caldicott.policy.state_tables import ndop_request_file
from caldicott.transport.ledger import Ledger
from sqlalchemy import select

from devtools.peers.ndop_double import NdopDouble
from devtools.peers.ndop_responder import SERVICE_MAILBOX

NUMBERS = ["9990000034", "9990000018", "9990000026", "9990000018"]
KEY = b"k" * 32
OTHER_KEY = b"o" * 32


@pytest.fixture(autouse=True)
def ndop_mailbox(monkeypatch):
    """The deployment's NDOP service mailbox: the release gateway lets the check go there and nowhere else."""
    monkeypatch.setenv("CALDICOTT_NDOP_MAILBOX", SERVICE_MAILBOX)


def test_request_format_lf_comma_sorted_unique():
    assert request_bytes(NUMBERS) == b"9990000018,\n9990000026,\n9990000034,\n"


def test_one_invalid_number_refuses_the_whole_request_without_naming_it():
    with pytest.raises(NdopError) as exc:
        request_bytes(["9990000018", "9990000019"])
    assert "9990000019" not in str(exc.value)
    with pytest.raises(NdopError):
        request_bytes(["9990000018", ""])      # a blank line would fail the file at NHS England too


def test_the_gateway_fact_is_established_from_the_bytes():
    good = request_bytes(NUMBERS)
    assert request_facts(good) == {"nhs_numbers_only": establish("nhs_numbers_only", good)}
    for bad in (b"", b"9990000018,\r\n", b"9990000018,\nJohn Smith,\n", b"9990000019,\n", b"9990000018\n",
                b"9990000026,\n9990000018,\n"):           # the last: not the canonical (sorted) file
        assert request_facts(bad) == {}, bad   # no evidence: the gateway refuses the item


def test_opted_out_are_those_missing_from_the_reply():
    assert opted_out_from(b"9990000018,\n9990000026,\n", b"9990000018,\n") == {"9990000026"}


def test_cache_keys_are_hmac_under_the_deployment_secret():
    keys = ndop_cache.NdopKeys(KEY)
    same = ndop_cache.NdopKeys(KEY).cache_keys(["9990000018"])
    assert keys.cache_keys(["9990000018"]) == same                               # same number + key: same
    assert ndop_cache.NdopKeys(OTHER_KEY).cache_keys(["9990000018"]) != same    # another key: another
    assert same[0] != hashlib.sha256(b"9990000018").hexdigest()                  # not the enumerable sha256
    assert len(same[0]) == 64 and "9990000018" not in same[0]
    assert keys.cache_keys(["9990000018", "9990000026"])[0] != keys.cache_keys(["9990000026"])[0]


@pytest.mark.parametrize("secret", [None, b"", b"short-key"])
def test_no_key_no_check(state_engine, secret):
    with pytest.raises(NdopKeyMissing, match="no cache key"):
        NdopChecker(state_engine, secret, NdopDouble())
    with pytest.raises(NdopKeyMissing):
        NdopChecker(state_engine, secret)        # not even the cache is read
    from caldicott.disclosure.package import ndop_from_cache

    with pytest.raises(NdopKeyMissing):
        ndop_from_cache(state_engine, secret)    # a research extract is not built


def test_sealed_request_opens_only_with_its_key_and_file():
    keys = ndop_cache.NdopKeys(KEY)
    sealed = keys.seal(b"9990000018,\n", "r-1")
    assert b"9990000018" not in sealed and keys.unseal(sealed, "r-1") == b"9990000018,\n"
    with pytest.raises(NdopError):
        keys.unseal(sealed, "r-2")
    with pytest.raises(NdopError):
        ndop_cache.NdopKeys(OTHER_KEY).unseal(sealed, "r-1")


def _all_bytes(folder) -> bytes:
    return b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file())


def test_check_through_the_gateway_caches_keyed_answers_for_a_limited_time(state_engine, tmp_path):
    double = NdopDouble(opted_out=["9990000026"])
    checker = NdopChecker(state_engine, KEY, double, ttl=dt.timedelta(days=7))
    sent = checker.send(NUMBERS, "r1")
    assert sent.sent == 3 and sent.pending == 3 and double.requests == [3]

    # awaiting the reply: the request is in the state database, sealed; no NHS number in clear anywhere on disk
    with state_engine.connect() as conn:
        (row,) = conn.execute(select(ndop_request_file)).mappings().all()
    assert row["file_id"] == "r1-1" and row["numbers"] == 3 and row["sealed"] and row["closed_at"] is None
    on_disk = _all_bytes(tmp_path)
    assert on_disk and not any(n.encode() in on_disk for n in NUMBERS)
    entry = Ledger(state_engine).get(row["item_id"])
    assert entry.state == "sent" and entry.recipient == "nhs-england-ndop"

    assert checker.collect("r1")
    assert checker.status(NUMBERS).opted_out == {"9990000026"} and checker.status(NUMBERS).complete
    assert double.acknowledged == ["r1-1.dat"] and Ledger(state_engine).get(row["item_id"]).state == "acked"
    with state_engine.connect() as conn:
        rows = conn.execute(select(cache_table.c.nhs_hash, cache_table.c.expires_at)).all()
        closed = conn.execute(select(ndop_request_file)).mappings().one()
    assert sorted(h for h, _ in rows) == sorted(ndop_cache.NdopKeys(KEY).cache_keys(sorted(set(NUMBERS))))
    assert not {hashlib.sha256(n.encode()).hexdigest() for n in NUMBERS} & {h for h, _ in rows}
    assert closed["outcome"] == "replied" and closed["sealed"] is None          # the request is not kept
    assert not any(n.encode() in _all_bytes(tmp_path) for n in NUMBERS)

    # within the cache's lifetime nothing is sent again; another key finds nothing
    again = checker.send(NUMBERS, "r1")
    assert again.sent == 0 and again.from_cache == 3 and double.requests == [3]
    assert NdopChecker(state_engine, OTHER_KEY).status(NUMBERS).pending == 3
    later = utcnow() + dt.timedelta(days=8)
    assert checker.cached(NUMBERS, now=later) == {}


def test_purge_removes_expired_answers_keeps_current_ones_and_erases_stale_requests(state_engine):
    now = utcnow()
    keys = ndop_cache.NdopKeys(KEY)
    old, current = keys.cache_keys(["9990000018", "9990000026"])
    with state_engine.begin() as conn:
        conn.execute(cache_table.insert(), [
            {"nhs_hash": old, "opted_out": True, "checked_at": now - dt.timedelta(days=8),
             "expires_at": now - dt.timedelta(days=1), "request_id": "t"},
            {"nhs_hash": current, "opted_out": False, "checked_at": now, "expires_at": now + dt.timedelta(days=6),
             "request_id": "t"}])
    ndop_cache.add_file(state_engine, keys, file_id="stale-1", request_id="stale", item_id="ndop_check-x",
                        payload=b"9990000034,\n", numbers=1)
    assert ndop_cache.purge(state_engine) == {"expired_answers": 1, "stale_requests": 0}
    with state_engine.connect() as conn:
        assert set(conn.execute(select(cache_table.c.nhs_hash)).scalars()) == {current}
    assert ndop_cache.purge(state_engine, now + dt.timedelta(days=8)) == {"expired_answers": 1, "stale_requests": 1}
    with state_engine.connect() as conn:
        f = conn.execute(select(ndop_request_file)).mappings().one()
        assert conn.execute(select(cache_table)).first() is None
    assert f["outcome"] == "stale" and f["sealed"] is None


def test_each_check_purges_expired_answers(state_engine):
    expired = ndop_cache.NdopKeys(KEY).cache_keys(["9990000042"])[0]
    with state_engine.begin() as conn:
        conn.execute(cache_table.insert(), [{"nhs_hash": expired, "opted_out": True, "checked_at": utcnow(),
                                             "expires_at": utcnow() - dt.timedelta(seconds=1), "request_id": "t"}])
    NdopChecker(state_engine, KEY, NdopDouble()).send(["9990000018"], "r2")
    with state_engine.connect() as conn:
        assert expired not in set(conn.execute(select(cache_table.c.nhs_hash)).scalars())


def test_where_the_opt_out_applies():
    applied = where_applied()
    assert applied["monthly_dataset.mandated_submission"] is False     # required by law
    assert applied["monthly_dataset.commissioner_extract"] is True
    assert applied["disclosure.research"] is True and applied["disclosure.court_order"] is False


def test_filter_is_reusable_on_any_frame():
    df = pd.DataFrame({"nhs": ["9990000018", "9990000026", None], "x": [1, 2, 3]})
    assert filter_opted_out(df, "nhs", {"9990000026"})["x"].tolist() == [1, 3]
