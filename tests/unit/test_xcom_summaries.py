"""The XCom payloads the domain returns match the TypedDicts that describe them (issue 15): same keys, counts only."""

from __future__ import annotations

import datetime as dt
from typing import get_type_hints

from caldicott.disclosure import flow
from caldicott.gateway import ReleaseReport
from caldicott.policy import ndop_cache
from caldicott.policy.ndop import NdopCounts, NdopStatus
from caldicott.updates import deliver


def keys(td: type) -> set[str]:
    return set(get_type_hints(td))


def test_contract_result_as_dict_is_a_contract_summary():
    r = deliver.ContractResult("C1", files={"sessions": "sent"}, rows={"sessions": 3}, quarantined=1,
                               held_reasons={}, rules=["r"], text_cleaned={})
    assert set(r.as_dict()) == keys(deliver.ContractSummary)


def test_report_totals_contracts_and_names_the_undelivered():
    a = deliver.ContractResult("C1", files={"sessions": "sent", "activity": "held"}, rows={"sessions": 3},
                               quarantined=2, held_reasons={"activity": "no certificate"}, text_cleaned={"x": 1})
    b = deliver.ContractResult("C2", files={"sessions": "already_sent"}, rows={"sessions": 1})
    out = deliver.report([a.as_dict(), b.as_dict()], {"unknown_referrer": 4}, ["C1", "C3", "C2"])
    assert set(out) == keys(deliver.UpdatesReport)
    assert out["contracts"] == 2
    assert out["files"] == {"sent": 1, "held": 1, "already_sent": 1}
    assert out["rows"] == {"sessions": 4}
    assert out["quarantined"] == {"unknown_referrer": 4}      # the run's, by reason (not the contracts' sum)
    assert out["held"] == ["C1:activity"]
    assert out["text_cleaned"] == {"x": 1}
    assert out["not_delivered"] == ["C3"]
    assert set(deliver.summarise([a.as_dict()])) == keys(deliver.UpdatesSummary)


def test_purge_returns_purge_counts(state_engine):
    out = ndop_cache.purge(state_engine, now=dt.datetime(2026, 1, 1))
    assert out == {"expired_answers": 0, "stale_requests": 0}
    assert set(out) == keys(ndop_cache.PurgeCounts)


def test_ndop_counts_keys():
    assert set(NdopStatus(opted_out={"9990000018"}, pending=2).counts()) == keys(NdopCounts)


def test_release_result_carries_the_gateways_counts():
    report = ReleaseReport(sent=["i1"])
    out = flow._result("D1", True, report)
    assert {k: out[k] for k in report.counts()} == report.counts()
    assert set(out) == {"disclosure_id", "released", *report.counts()}
