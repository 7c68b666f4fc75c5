"""
### GP assessment and discharge letters

Once a day, for the previous day (London dates), finds every **assessment** completed (a referral's first
attended assessment contact) and every **discharge** recorded, writes a letter for each from the
service's Jinja2 templates, renders it to PDF and delivers it:

* to the patient's **registered GP practice** — unless the patient declined GP sharing at registration
  (then *withheld*: no GP letter; counted by letter id) — by the practice's channel:
  `smime-email` (S/MIME, AES-256, to the practice certificate, via the `caldicott_smtp` connection; no
  valid certificate ⇒ *held*, never sent plain) or `mesh` (GP Connect Send Document, FHIR STU3 ITK3
  bundle, via `caldicott_mesh`);
* a **copy to the patient**, always: `[secure]` e-mail through the NHSmail encryption gateway, S/MIME to the
  patient's certificate, or the print-and-post batch (encrypted to the print house, over SFTP or to a
  staging folder: `caldicott_print`).

**When:** after each successful `records_quality` scan (the Asset `caldicott://records_quality/checked`), with
06:00 London as the fallback; both runs cover the previous London day and the ledger sends each letter once, so
the second finds the day done. Only the 06:00 run carries the 10:00 deadline alert.

Tasks: `plan_letters` (quarantine, withhold, hold, ledger intents; batches per practice and channel) →
`send_batch` (mapped over batches, ids only in XCom) → `report` → `await_acks` (a sensor in reschedule mode:
waits up to `ack_wait_seconds` for this run's business acks without holding a worker slot; only looks) →
`check_acks` (reads ITK3 infrastructure and business acks from the MESH inbox; **fails, alerting on-call, when
MESH letters have no business ack after `ack_timeout_hours`** — the failure names letter ids only).

* **Reads:** `caldicott_records` (read-only); the Airflow Variable `caldicott_service` (the sending service's
  name, address, ODS code and named clinician, JSON; no default: unset, `send_batch` fails naming it).
  **Writes:** `caldicott_state` (ledger, quarantine, acks).
* **Safe to re-run:** every letter has a deterministic id per (referral, event, recipient); the ledger
  sends each exactly once, however often the day is re-run or a task retried. Params (the trigger form, or the
  same keys as conf): `day` (YYYY-MM-DD) redoes one day; `start` and `end` a range (end exclusive). A malformed
  date is refused by the form / REST API; a range without both ends or not in order fails `plan_letters`.
* **XCom / logs:** counts, batch ids, letter ids and referral ids only.
"""

from __future__ import annotations

import datetime as dt

import pendulum
from airflow.sdk import Param, dag, task
from caldicott_airflow.assets import checked_or_cron
from caldicott_airflow.dag_defaults import COMMON_TAGS, default_args
from caldicott_airflow.deadlines import daily_finish_by
from caldicott_airflow.gp_acks import MAX_WAIT_SECONDS, POKE_INTERVAL, POKE_TIMEOUT, SENSOR_TIMEOUT
from caldicott_airflow.intervals import DAY_SCHEMA, run_interval

SMTP_CONN_ID = "caldicott_smtp"
MESH_CONN_ID = "caldicott_mesh"
PRINT_CONN_ID = "caldicott_print"


@dag(
    dag_id="gp_letters",
    schedule=checked_or_cron("0 6 * * *"),
    # early, so a manual run for any old day (logical date) gets its tasks; catchup stays off
    start_date=pendulum.datetime(2020, 4, 1, tz="Europe/London"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=[*COMMON_TAGS, "letters", "direct-care"],
    # half an hour a try: three hung tries and their backoff still end before the 10:00 deadline (a day's letters
    # take seconds to minutes: bench/RESULTS.md)
    default_args=default_args(execution_timeout=dt.timedelta(minutes=30)),
    # on-call hears if the day's letters are not out by 10:00 (the run starts at 06:00)
    deadline=daily_finish_by(hour=10, scheduled_at=dt.time(6), name="gp_letters not finished by 10:00"),
    params={
        "day": Param(None, **DAY_SCHEMA, description="London day to (re)send, YYYY-MM-DD; default: the run's day"),
        "start": Param(None, **DAY_SCHEMA, description="first London day of a range to (re)send, YYYY-MM-DD; "
                                                      "with end"),
        "end": Param(None, **DAY_SCHEMA, description="day after the last of the range (exclusive), YYYY-MM-DD; "
                                                    "with start"),
        "ack_timeout_hours": Param(48, type="number", minimum=0,
                                   description="Alert when a MESH letter has no business ack after this long."),
        "ack_wait_seconds": Param(0, type="integer", minimum=0, maximum=MAX_WAIT_SECONDS,
                                  description="How long await_acks waits for this run's acks before check_acks."),
    },
)
def gp_letters():
    @task
    def plan_letters(**context) -> dict:
        """Find the interval's letters; quarantine / withhold / hold; record intents; return batches (ids)."""
        from caldicott.letters.flow import plan
        from caldicott_airflow.connections import records_engine, state_engine

        first, end, key = run_interval(context)
        return plan(records_engine(), state_engine(), first, end, key)

    @task
    def batches(planned: dict) -> list[dict]:
        return planned["batches"]

    @task(max_active_tis_per_dagrun=2)
    def send_batch(batch: dict, **context) -> dict:
        """Render, protect and release one batch through the gateway; counts and ids only. The body is
        :func:`caldicott_airflow.letters.send_planned_batch`, which the benchmark times too."""
        from caldicott_airflow.letters import send_planned_batch

        first, end, _ = run_interval(context)
        result = send_planned_batch(batch, first, end, smtp_conn_id=SMTP_CONN_ID, mesh_conn_id=MESH_CONN_ID,
                                    print_conn_id=PRINT_CONN_ID)
        if result["failed"]:
            raise RuntimeError(f"batch {batch['batch_id']}: {result['failed']} letters failed to send "
                               f"(ledger state 'failed'); retrying sends only those")
        return result

    @task(trigger_rule="none_failed")
    def report(planned: dict, results: list[dict] | None = None, **context) -> dict:
        """The run's report: counts by outcome, withheld / held / quarantined by reason (ids only)."""
        from caldicott.letters.flow import FLOW, sent_by_run
        from caldicott.transport.ledger import Ledger
        from caldicott_airflow.connections import state_engine

        results = list(results or [])
        totals = {k: sum(r.get(k, 0) for r in results) for k in ("sent", "already_sent", "refused", "failed",
                                                                 "not_planned")}
        # sent / already sent from the ledger: a batch whose first try sent some letters and then failed (retried)
        # reports only its last try in XCom, which would count those letters as "already sent" by an earlier run
        run = context.get("dag_run")
        since = getattr(run, "start_date", None) if run is not None else None
        if since is not None:
            totals.update(sent_by_run(state_engine(), planned["batches"], since))
        out = {
            "run_key": planned["run_key"], "letters": planned["letters"], **totals,
            "batches": len(planned["batches"]), "planned": planned["counts"],
            "withheld": planned["withheld"], "withheld_ids": planned["withheld_ids"],
            "held_ids": planned["held_ids"], "quarantined_by_reason": planned["quarantined_by_reason"],
            "ledger": Ledger(state_engine()).counts(FLOW, planned["run_key"]),
        }
        import logging

        logging.getLogger("caldicott.gp_letters").info(
            "gp_letters %s: sent=%d already_sent=%d withheld=%d held=%d quarantined=%s", out["run_key"],
            out["sent"], out["already_sent"], len(out["withheld_ids"]), len(out["held_ids"]),
            out["quarantined_by_reason"])
        return out

    @task.sensor(trigger_rule="none_failed", mode="reschedule", poke_interval=POKE_INTERVAL.total_seconds(),
                 timeout=SENSOR_TIMEOUT.total_seconds(), execution_timeout=POKE_TIMEOUT)
    def await_acks(summary: dict, **context) -> bool:
        """Wait (rescheduled, no worker held) until this run's MESH letters have their business acks in the inbox,
        or ``ack_wait_seconds`` have passed; only looks (caldicott_airflow.gp_acks)."""
        from caldicott_airflow.gp_acks import acks_ready

        return acks_ready(context, MESH_CONN_ID)

    @task(trigger_rule="none_failed")
    def check_acks(**context) -> dict:
        """Read ITK3 acks and MESH non-delivery reports from the inbox; alert (fail) for MESH letters returned
        undeliverable, or with no business ack in time."""
        import datetime as dt

        from airflow.sdk.exceptions import AirflowFailException
        from caldicott.letters import flow, gp_connect
        from caldicott.transport.ledger import Ledger
        from caldicott.transport.mesh import read_acks
        from caldicott.transport.mesh_reports import read_reports
        from caldicott_airflow.connections import state_engine
        from caldicott_airflow.gp_acks import waiting_letters
        from caldicott_airflow.hooks.mesh import MeshHook

        state = state_engine()
        if not waiting_letters(state):
            return {"acks_read": 0, "acked": 0, "overdue": 0, "undeliverable": 0}
        params = context["params"]
        totals = {"acks_read": 0, "acked": 0, "negative": 0, "unmatched": 0}
        undeliverable: list[str] = []
        with MeshHook(MESH_CONN_ID) as client:
            # the inbox is read in pages (read_acks: 500 messages): keep reading while a page came back full, so
            # a big day's acks are all recorded before the overdue check; no waiting here (await_acks did that)
            for _page in range(20):
                got = flow.record_acks(state, list(read_acks(client)))
                for k in totals:
                    totals[k] += got.get(k, 0)
                # only Send Document's reports: another flow's report in the shared mailbox is left for that flow
                reports = read_reports(client, workflow_id=gp_connect.WORKFLOW)
                undeliverable += flow.record_non_delivery(state, reports)["undeliverable_ids"]
                if got.get("acks_read", 0) < 500 or not waiting_letters(state):
                    break
        late = flow.overdue(state, dt.timedelta(hours=float(params["ack_timeout_hours"])))
        result = {**totals, "overdue": len(late), "undeliverable": len(undeliverable), "acks": flow.ack_summary(state),
                  "ledger": Ledger(state).counts(flow.FLOW)}

        def ids(found: list[str]) -> str:
            return ", ".join(found[:20]) + (" ..." if len(found) > 20 else "")

        alerts = []
        if undeliverable:
            alerts.append(
                f"{len(undeliverable)} GP letter(s) sent over MESH were returned undeliverable (MESH non-delivery "
                f"report: the practice's mailbox did not collect them; ledger state undeliverable, not resent). "
                f"Contact the practice and send by another route; letter ids: {ids(undeliverable)}")
        if late:
            alerts.append(
                f"{len(late)} GP letter(s) sent over MESH have no business acknowledgement after "
                f"{params['ack_timeout_hours']} h (ledger state ack_overdue). Check the practice's MESH "
                f"mailbox / contact the practice; letter ids: {ids(late)}")
        if alerts:
            raise AirflowFailException(" | ".join(alerts))
        return result

    planned = plan_letters()
    sent = send_batch.expand(batch=batches(planned))
    summary = report(planned, sent)
    await_acks(summary) >> check_acks()


gp_letters()
