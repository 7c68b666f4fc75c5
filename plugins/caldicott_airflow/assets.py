"""The Asset the daily flows schedule on: "the records source was checked today" (``records_quality``).

``records_quality`` puts every record a flow could not use into the quarantine before the day's flows start, so
the data-quality lead sees the faults first. Scheduling the daily flows on its success (an Asset event) rather
than on a clock that merely hopes the scan is done keeps that order; the clock stays as the fallback, so a day
whose scan failed or never ran still gets its letters and referrer files:

* :data:`RECORDS_CHECKED` is the Asset; ``records_quality`` lists it in its last task's ``outlets``, so Airflow
  records an event only when the scan succeeded;
* :func:`checked_or_cron` is the schedule of a daily flow: a run on each event **or** at the cron time
  (``AssetOrTimeSchedule``). Both runs cover the same London day (the day before the run was queued:
  :mod:`caldicott_airflow.intervals`), and the delivery ledger sends every item once, so whichever comes second
  finds the day done and sends nothing. Only the clock's run has a logical date, so only it carries the DAG's
  deadline alert (a DeadlineAlert measured from the logical date is not created for an Asset-triggered run).

Cheap to import (no I/O): DAG files import it at parse time.
"""

from __future__ import annotations

from airflow.sdk import Asset, AssetOrTimeSchedule, CronTriggerTimetable

LONDON = "Europe/London"

#: Emitted by ``records_quality.scan_records`` on success. The URI names the DAG and what it guarantees.
RECORDS_CHECKED = Asset(uri="caldicott://records_quality/checked", name="records_quality_checked",
                        group="caldicott")


def checked_or_cron(cron: str) -> AssetOrTimeSchedule:
    """Run after each successful records check, or at ``cron`` (London time) if the check has not come.

    ``cron`` is what the DAG's ``schedule`` string was (``"0 6 * * *"``, ``"@daily"``): the same
    ``CronTriggerTimetable`` Airflow 3 would have made of it (``create_cron_data_intervals`` off), so clock runs
    keep their logical dates and intervals.
    """
    return AssetOrTimeSchedule(timetable=CronTriggerTimetable(cron, timezone=LONDON), assets=RECORDS_CHECKED)
