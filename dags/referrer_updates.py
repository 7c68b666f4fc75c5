"""
### Referrer updates

Once a day, sends each referring provider with an active contract the sessions of **its own**
referrals that took place that day (Europe/London), with attendance and — only where the contract
requires it — the clinical summary of each session, as CSV (`csv-v1`) or a FHIR R4 Bundle
(`fhir-r4-v1`), per contract. The run that closes a month also sends each contract that asks for it a
**monthly activity file** for invoicing. Formats and contract options: `docs/referrer_updates.md`.

* **Tasks:** `plan` quarantines bad records (unknown referrer, contact before referral, unusable
  NHS number) and lists the active contracts; `deliver` runs **once per contract** (the map index is
  the contract id): build the file(s), record ledger intents, release through the gateway; `report`
  totals the run and fails it if any contract's files did not arrive.
* **Transports:** SFTP through the contract's Airflow connection (`connection_id`, host key pinned
  in its `host_key` extra): upload `name.part`, verify size and sha256, rename. MESH contracts go
  from Caldicott's mailbox (connection `caldicott_mesh`) to the contract's mailbox and workflow id.
* **Failures:** a referrer that is down or refuses login makes only that contract's task retry
  (with backoff) and then fail, naming the contract; other contracts still deliver. A changed host
  key fails at once, sends nothing, and is not retried.
* **When:** after each successful `records_quality` scan (the Asset `caldicott://records_quality/checked`), with
  midnight London as the fallback; both runs cover the previous London day, and the ledger skips what the first
  delivered.
* **Re-run:** safe. File names are fixed per (contract, day / month); delivered files are skipped
  by the ledger. Params (trigger form, or the same keys as conf): `day` (YYYY-MM-DD) redoes a day;
  `activity_month` (YYYY-MM) (re)sends a month's activity file. Malformed values are refused at trigger time.
* **XCom / logs:** contract ids and counts only.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag, task
from caldicott_airflow.assets import checked_or_cron
from caldicott_airflow.dag_defaults import COMMON_TAGS, default_args
from caldicott_airflow.intervals import DAY_SCHEMA, MONTH_SCHEMA


@dag(
    dag_id="referrer_updates",
    schedule=checked_or_cron("@daily"),
    start_date=pendulum.datetime(2026, 10, 1, tz="Europe/London"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=[*COMMON_TAGS, "referrer-updates", "direct-care"],
    default_args=default_args(),
    params={
        "day": Param(None, **DAY_SCHEMA, description="London day to (re)send, YYYY-MM-DD; default: the run's day"),
        "activity_month": Param(None, **MONTH_SCHEMA,
                                description="also (re)send this month's activity files, YYYY-MM"),
    },
)
def referrer_updates():
    @task
    def plan(**context) -> list[str]:
        """Quarantine the interval's bad records; return the active contracts' ids (one task each)."""
        import logging

        from caldicott.updates.deliver import plan_interval
        from caldicott_airflow.connections import records_engine, state_engine
        from caldicott_airflow.intervals import daily_interval, run_key

        first, end = daily_interval(context)
        planned = plan_interval(records_engine(), state_engine(), first, end, run_key(first, end))
        logging.getLogger(__name__).info(
            "run %s: %d sessions, %d contracts, quarantined %s", planned["run_key"], planned["sessions"],
            len(planned["contract_ids"]), planned["by_reason"] or "nothing")
        return planned["contract_ids"]

    @task(map_index_template="{{ contract_id }}")
    def deliver(contract_id: str, **context) -> dict:
        """Build and send one contract's files; retry on transport failure, naming the contract only."""
        import datetime as dt

        from airflow.sdk.exceptions import AirflowFailException
        from caldicott.updates.build import activity_month_for
        from caldicott.updates.deliver import ContractDeliveryError, deliver_contract
        from caldicott_airflow.connections import records_engine, state_engine
        from caldicott_airflow.intervals import daily_interval, run_key
        from caldicott_airflow.referrer_senders import sender_for

        context["contract_id"] = contract_id
        first, end = daily_interval(context)
        named = context["params"].get("activity_month")
        month = dt.date.fromisoformat(named + "-01") if named else activity_month_for(first, end)

        try:
            result = deliver_contract(records_engine(), state_engine(), contract_id, first, end,
                                      run_key(first, end), sender_for, activity_month=month)
        except ContractDeliveryError as exc:
            if not exc.retryable:
                raise AirflowFailException(str(exc)) from None
            raise RuntimeError(str(exc)) from None
        return result.as_dict()

    @task(trigger_rule="all_done")
    def report(planned: list[str], **context) -> dict:
        """Totals over contracts; fail the run (naming contract ids) if any contract was not delivered."""
        from airflow.sdk.exceptions import AirflowFailException
        from caldicott.policy.referrer_updates import FLOW
        from caldicott.state.quarantine import counts_by_reason
        from caldicott.updates.deliver import summarise
        from caldicott_airflow.connections import state_engine
        from caldicott_airflow.intervals import daily_interval, run_key

        got = context["ti"].xcom_pull(task_ids="deliver")
        results = [got] if isinstance(got, dict) else [r for r in (got or []) if isinstance(r, dict)]
        summary = summarise(results)
        summary["quarantined"] = counts_by_reason(state_engine(), FLOW, run_key(*daily_interval(context)))
        done = {r["contract_id"] for r in results}
        summary["not_delivered"] = sorted(c for c in planned if c not in done)
        if summary["not_delivered"]:
            raise AirflowFailException(
                f"referrer updates not delivered for contract(s) {', '.join(summary['not_delivered'])}")
        return summary

    planned = plan()
    deliver.expand(contract_id=planned) >> report(planned)


referrer_updates()
