"""
### Transfer of care: a patient report to the provider taking the patient on

Once a day, for the previous day (London dates), finds every **onward referral** recorded (`onward_referral`) and
sends the **receiving provider** a patient report (PDF): presenting problem, course of treatment (sessions attended
and missed, therapy, digital programme), PHQ-9 / GAD-7 / WSAS first and last with what they mean, the risk the
clinician recorded, the reason for the transfer and a named contact — only the fields
`caldicott/policy/transfers.py` allows. By the receiver's channel in the records source: `mesh` (its mailbox and
workflow, via `caldicott_mesh`), `smime-email` (S/MIME to its certificate, via `caldicott_smtp`) or `sftp` (CMS
encrypted to its certificate, on its own server, host key pinned). **A receiver with no usable channel is held**
(never sent plain) and on-call is alerted. The patient's GP gets a copy unless the patient declined GP sharing, and
the patient always gets one (as for the GP letters).

**Where data may go:** every report carries its receiver's country; the release gateway refuses a country not on the
deployment's adequacy list (`CALDICOTT_ADEQUACY_FILE`, default the UK, the EEA and the UK's other full adequacy
regulations), records the refusal in the ledger with its rule, and on-call is alerted.

Tasks: `plan_reports` (quarantine, hold, ledger intents; batches per receiver / practice and channel) →
`send_batch` (mapped, ids only in XCom) → `report` (counts, held / refused ids and reasons; alerts on-call when any
report is held or refused).

* **Reads:** `caldicott_records` (read-only); Variable `caldicott_service`. **Writes:** `caldicott_state`.
* **Safe to re-run:** one ledger id per (onward referral, recipient). Params (the trigger form, or the same keys
  as conf): `day` (YYYY-MM-DD) redoes one day; `start` and `end` a range (end exclusive).
* **XCom / logs:** counts, batch ids, report ids and onward referral ids only.
"""

from __future__ import annotations

import datetime as dt

import pendulum
from airflow.sdk import Param, dag, task
from caldicott_airflow.assets import checked_or_cron
from caldicott_airflow.dag_defaults import COMMON_TAGS, default_args
from caldicott_airflow.intervals import DAY_SCHEMA, run_interval


@dag(
    dag_id="transfer_of_care",
    # after the day's record checks (records_quality's Asset), or at 06:30 at the latest, as gp_letters
    schedule=checked_or_cron("30 6 * * *"),
    start_date=pendulum.datetime(2020, 4, 1, tz="Europe/London"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=[*COMMON_TAGS, "transfers", "direct-care"],
    # half an hour a try, as gp_letters: a day's reports take seconds
    default_args=default_args(execution_timeout=dt.timedelta(minutes=30)),
    params={
        "day": Param(None, **DAY_SCHEMA, description="London day to (re)send, YYYY-MM-DD; default: the run's day"),
        "start": Param(None, **DAY_SCHEMA, description="first London day of a range to (re)send, YYYY-MM-DD; "
                                                      "with end"),
        "end": Param(None, **DAY_SCHEMA, description="day after the last of the range (exclusive), YYYY-MM-DD; "
                                                    "with start"),
    },
)
def transfer_of_care():
    @task
    def plan_reports(**context) -> dict:
        """Find the interval's onward referrals; quarantine / hold; record intents; return batches (ids)."""
        from caldicott.transfers.flow import plan
        from caldicott_airflow.connections import records_engine, state_engine

        first, end, key = run_interval(context)
        return plan(records_engine(), state_engine(), first, end, key)

    @task
    def batches(planned: dict) -> list[dict]:
        return planned["batches"]

    @task(max_active_tis_per_dagrun=2)
    def send_batch(batch: dict, **context) -> dict:
        """Render, protect and release one batch through the gateway; counts and ids only."""
        import contextlib

        from caldicott.records.queries import table
        from caldicott.transfers.flow import send_batch as send
        from caldicott_airflow.connections import records_engine, state_engine
        from caldicott_airflow.service import sending_service
        from caldicott_airflow.transfers import channels_for

        first, end, _ = run_interval(context)
        service = sending_service()   # Variable caldicott_service; unset: fails here, before anything is sent
        records = records_engine()
        sftp_conn = None
        if batch["channel"] == "sftp":   # the receiver's own connection, from its organisation record
            orgs = table(records, "organisation", ["ods_code", "connection_id"])
            code = batch["batch_id"].rsplit("/", 1)[-1]
            sftp_conn = next((str(c) for o, c in zip(orgs["ods_code"], orgs["connection_id"], strict=True)
                              if o == code and c), None)
        with contextlib.ExitStack() as stack, channels_for(batch, service, stack, sftp_conn) as channels:
            result = send(records, state_engine(), batch, channels, first, end)
        if result["failed"]:
            raise RuntimeError(f"batch {batch['batch_id']}: {result['failed']} reports failed to send "
                               f"(ledger state 'failed'); retrying sends only those")
        return result

    @task(trigger_rule="none_failed")
    def report(planned: dict, results: list[dict] | None = None, **context) -> dict:
        """The run's report; alerts on-call (without failing the run) when reports are held or refused."""
        import logging

        from caldicott.transfers.flow import FLOW
        from caldicott.transport.ledger import Ledger
        from caldicott_airflow.connections import state_engine
        from caldicott_airflow.transfers import alert_held

        results = list(results or [])
        totals = {k: sum(r.get(k, 0) for r in results) for k in ("sent", "already_sent", "refused", "failed",
                                                                 "not_planned")}
        refused = {k: v for r in results for k, v in (r.get("refused_reasons") or {}).items()}
        led = Ledger(state_engine())
        held = {i: r for i, r in planned["held_reasons"].items()
                if (e := led.get(i)) is not None and e.state == "held"}   # still held (not released meanwhile)
        out = {
            "run_key": planned["run_key"], "reports": planned["reports"], **totals,
            "batches": len(planned["batches"]), "planned": planned["counts"],
            "withheld": planned["withheld"], "withheld_ids": planned["withheld_ids"],
            "held_ids": sorted(held), "held_by_reason": planned["held_by_reason"],
            "refused_ids": sorted(refused), "refused_reasons": refused,
            # receivers whose country is not on the adequacy list: refused by the gateway this run, or (a re-run)
            # still held in the ledger from the run that was refused
            "not_adequate_ids": planned.get("not_adequate_ids", []),
            "awaiting_receiver_ids": planned["awaiting_receiver_ids"],
            "quarantined_by_reason": planned["quarantined_by_reason"],
            "ledger": led.counts(FLOW, planned["run_key"]),
        }
        ti = context.get("ti")
        out["alerted"] = alert_held("transfer_of_care", getattr(ti, "run_id", None), held, refused)
        logging.getLogger("caldicott.transfer_of_care").info(
            "transfer_of_care %s: sent=%d already_sent=%d held=%d refused=%d", out["run_key"], out["sent"],
            out["already_sent"], len(held), len(refused))
        return out

    planned = plan_reports()
    sent = send_batch.expand(batch=batches(planned))
    report(planned, sent)


transfer_of_care()
