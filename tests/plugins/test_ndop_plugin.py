"""The Airflow side of the national data opt-out check fails closed: no cache key (connection
``caldicott_ndop_cache_key``) or no service mailbox, and no check runs and no research lookup is made; the task
fails without retrying and says which setting is missing."""

from __future__ import annotations

import json

import pytest
from airflow.sdk.exceptions import AirflowFailException
from caldicott.db import make_engine, sqlite_url
from caldicott.state.migrate import migrate
from caldicott_airflow import ndop
from caldicott_airflow.disclosure_sources import ndop_source

ENV = "AIRFLOW_CONN_CALDICOTT_NDOP_CACHE_KEY"


@pytest.fixture
def state(tmp_path):
    engine = make_engine(sqlite_url(tmp_path / "state.db"))
    migrate(engine)
    return engine


def _key(monkeypatch, password: str) -> None:
    monkeypatch.setenv(ENV, json.dumps({"conn_type": "generic", "password": password}))


PLACEHOLDER = "CHANGE-ME-at-least-32-random-bytes-keys-the-opt-out-cache"   # deploy/secrets.example


@pytest.mark.parametrize("password", [None, "", "too-short", PLACEHOLDER])
def test_no_key_fails_the_task_naming_the_connection(monkeypatch, state, password):
    monkeypatch.delenv(ENV, raising=False)
    if password is not None:
        _key(monkeypatch, password)
    for call in (ndop.ndop_cache_key, lambda: ndop_source(state)):
        with pytest.raises(AirflowFailException, match="caldicott_ndop_cache_key"):
            call()
    monkeypatch.setenv("CALDICOTT_NDOP_MAILBOX", "X26ABC3")
    with pytest.raises(AirflowFailException, match="caldicott_ndop_cache_key"), ndop.ndop_checker(state):
        pass


def test_key_from_the_connection(monkeypatch, state):
    _key(monkeypatch, "s" * 40)
    assert ndop.ndop_cache_key() == b"s" * 40
    lookup = ndop_source(state)
    with pytest.raises(Exception, match="no current check"):   # an empty cache is never read as "nobody opted out"
        lookup(["9990000018"])


def test_no_mailbox_fails_the_task(monkeypatch, state):
    _key(monkeypatch, "s" * 40)
    monkeypatch.delenv("CALDICOTT_NDOP_MAILBOX", raising=False)
    with pytest.raises(AirflowFailException, match="CALDICOTT_NDOP_MAILBOX"), ndop.ndop_checker(state, mesh=False):
        pass
    monkeypatch.setenv("CALDICOTT_NDOP_MAILBOX", "X26ABC3")
    with ndop.ndop_checker(state, mesh=False) as (checker, label):
        assert label == "MESH X26ABC3 (SPINE_NTT_UPHOLDING)"
        assert checker.status(["9990000018"]).pending == 1
