"""
### Records quality

Once a day, runs the checks every Caldicott flow relies on over the **whole** clinical-records source
(invalid or duplicated NHS numbers, malformed postcodes, missing GP practice, discharge before referral,
contacts before referral, unknown referrers, scores out of range) and puts each finding in the
quarantine under `records_quality`, so the data-quality lead can fix them at source before a flow
has to hold the record back.

**purge_ndop_cache** removes national data opt-out answers past their lifetime (7 days) and the sealed copies of
opt-out requests left unanswered, so nothing is kept longer than the opt-out allows between monthly checks.

* **Reads:** connection `caldicott_records` (read-only). **Writes:** connection `caldicott_state`.
* **XCom / logs:** counts per reason code only. Find the records with the runbook's quarantine query.
* **Safe to re-run:** findings are keyed by (run, record, reason); a re-run adds nothing.
* **Deadline:** on-call staff are alerted if a day's scan has not finished by 06:00 London, before the
  day's flows start (a manual re-run of a past day alerts at once: its deadline has passed).
* **Produces** the Asset `caldicott://records_quality/checked` when `scan_records` succeeds: `gp_letters` and
  `referrer_updates` start on it (their clock time is the fallback when no scan succeeded).
* **Params:** `day` (YYYY-MM-DD) names the London day the findings are filed under; default: the run's day.
"""

from __future__ import annotations

import datetime as dt

import pendulum
from airflow.sdk import Param, dag, task
from caldicott_airflow.assets import RECORDS_CHECKED
from caldicott_airflow.dag_defaults import COMMON_TAGS, default_args
from caldicott_airflow.deadlines import daily_finish_by
from caldicott_airflow.intervals import DAY_SCHEMA


@dag(
    dag_id="records_quality",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 10, 1, tz="Europe/London"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=[*COMMON_TAGS, "data-quality"],
    # half an hour a try (a whole-source scan takes seconds to minutes): three hung tries and their backoff
    # still end before the 06:00 deadline, when the daily flows start on the clock anyway
    default_args=default_args(execution_timeout=dt.timedelta(minutes=30)),
    deadline=daily_finish_by(hour=6, name="records_quality not finished by 06:00"),
    params={
        "day": Param(None, **DAY_SCHEMA,
                     description="London day to file the findings under, YYYY-MM-DD; default: the run's day"),
    },
)
def records_quality():
    @task(outlets=[RECORDS_CHECKED])
    def scan_records(**context) -> dict:
        """Check every record; quarantine findings; return counts (no patient data).

        Its success emits :data:`RECORDS_CHECKED`, which starts the daily flows: the findings are in the
        quarantine before any flow reads the same records."""
        from caldicott.records.quality import scan
        from caldicott_airflow.connections import records_engine, state_engine
        from caldicott_airflow.intervals import daily_interval, run_key

        return scan(records_engine(), state_engine(), run_key(*daily_interval(context)))

    @task
    def purge_ndop_cache() -> dict:
        """Expired opt-out answers and stale requests out of the state database; counts only."""
        from caldicott.policy.ndop_cache import purge
        from caldicott_airflow.connections import state_engine

        return purge(state_engine())

    scan_records()
    purge_ndop_cache()


records_quality()
