"""NDOP request format, reply parsing, the time-limited cache, and the reusable filter (test double)."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
from caldicott.policy.ndop import (
    FakeNdopService,
    NdopChecker,
    NdopError,
    filter_opted_out,
    ndop_cache,
    opted_out_from,
    request_bytes,
)
from sqlalchemy import select

NUMBERS = ["9990000034", "9990000018", "9990000026", "9990000018"]


def test_request_format_lf_comma_sorted_unique():
    assert request_bytes(NUMBERS) == b"9990000018,\n9990000026,\n9990000034,\n"


def test_one_invalid_number_refuses_the_whole_request_without_naming_it():
    with pytest.raises(NdopError) as exc:
        request_bytes(["9990000018", "9990000019"])
    assert "9990000019" not in str(exc.value)


def test_opted_out_are_those_missing_from_the_reply():
    assert opted_out_from(b"9990000018,\n9990000026,\n", b"9990000018,\n") == {"9990000026"}


def test_checker_caches_for_a_limited_time(state_engine, tmp_path):
    fake = FakeNdopService(tmp_path / "svc", opted_out=["9990000026"])
    checker = NdopChecker(state_engine, fake, ttl=dt.timedelta(days=7), work_dir=tmp_path / "req")
    assert checker.send(NUMBERS, "r1").sent == 3
    assert checker.collect("r1")
    assert checker.status(NUMBERS).opted_out == {"9990000026"}
    with state_engine.connect() as conn:
        rows = conn.execute(select(ndop_cache.c.nhs_hash, ndop_cache.c.expires_at)).all()
    assert len(rows) == 3 and all(len(h) == 64 and "999" not in h[:3] for h, _ in rows)  # hashes, not numbers
    later = dt.datetime.now(dt.UTC).replace(tzinfo=None) + dt.timedelta(days=8)
    assert checker.cached(NUMBERS, now=later) == {}
    assert checker.purge_expired(now=later) == 3


def test_filter_is_reusable_on_any_frame():
    df = pd.DataFrame({"nhs": ["9990000018", "9990000026", None], "x": [1, 2, 3]})
    assert filter_opted_out(df, "nhs", {"9990000026"})["x"].tolist() == [1, 3]
