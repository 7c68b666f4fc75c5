"""Waiting for GP Connect acknowledgements without holding a worker: the poke of ``gp_letters.await_acks``.

GP Connect Send Document letters go over MESH; the practice's system answers each with an ITK3 infrastructure
ack and a business ack, minutes to hours later. ``check_acks`` reads them (and MESH non-delivery reports) into the
state database and alerts on letters still unacknowledged after ``ack_timeout_hours``. A run may first wait for
this run's acks (``ack_wait_seconds``; the demo and tests do, so that their acks are in before the check).

That wait used to be ``time.sleep`` in a loop inside ``check_acks``: a worker slot held for up to 15 minutes doing
nothing. It is now a sensor in ``reschedule`` mode (``await_acks``): each poke is a short task try that looks, and
between pokes the slot is free. The poke only **looks**: it lists the acknowledgement messages in the inbox and
reads them without acknowledging (removing) any, so it records nothing and any number of pokes change nothing.
``check_acks`` then reads, records and alerts exactly as before, in one place. The poke is done when

* no MESH letter of the flow is waiting for a business ack (``sent`` / ``ack_overdue`` in the ledger), or
* every waiting letter has a positive business ack in the inbox (``check_acks`` will mark them ``acked``), or
* ``ack_wait_seconds`` have passed since the first poke (0, the default: at once, without connecting to MESH).

The sensor's own ``timeout`` is a backstop above the largest ``ack_wait_seconds`` the Param allows.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

log = logging.getLogger(__name__)

#: Between pokes. A poke is a task try (seconds of start-up), so not much more often than this.
POKE_INTERVAL = dt.timedelta(seconds=15)
#: One poke (a look at the inbox) may take this long; a MESH server that stops answering fails the poke, not the day.
POKE_TIMEOUT = dt.timedelta(minutes=5)
#: The largest ``ack_wait_seconds`` the Param allows, and the sensor's backstop above it.
MAX_WAIT_SECONDS = 900
SENSOR_TIMEOUT = dt.timedelta(seconds=MAX_WAIT_SECONDS * 2)


def waiting_letters(state) -> set[str]:
    """Ledger ids of the flow's MESH letters still waiting for a business ack."""
    from caldicott.letters.flow import FLOW
    from caldicott.transport.ledger import State, ledger
    from sqlalchemy import select

    with state.connect() as conn:
        return set(conn.execute(select(ledger.c.item_id).where(
            ledger.c.flow == FLOW, ledger.c.channel == "mesh",
            ledger.c.state.in_([State.SENT.value, State.ACK_OVERDUE.value]))).scalars())


def business_acks_in_inbox(client, letters: set[str], limit: int = 500) -> set[str]:
    """Which of ``letters`` have a positive business ack waiting in the inbox. Reads, never acknowledges."""
    from caldicott.letters.gp_connect import ACK_WORKFLOW, message_header_id, parse_ack

    by_header = {message_header_id(i): i for i in letters}
    found: set[str] = set()
    for n, message_id in enumerate(client.iterate_message_ids(workflow_filter=ACK_WORKFLOW)):
        if n >= limit:
            break
        msg = client.retrieve_message(message_id)
        try:
            if str(getattr(msg, "message_type", "") or "").upper() == "REPORT":
                continue
            parsed = parse_ack(msg.read())
        finally:
            msg.close()
        if parsed is not None and parsed[0] in by_header and parsed[1] == "business" and parsed[2]:
            found.add(by_header[parsed[0]])
    return found


def waited_seconds(context: dict[str, Any], now: dt.datetime | None = None) -> float:
    """Seconds since the sensor's first poke (0 on the first), from Airflow's record of its reschedules."""
    first = context["ti"].get_first_reschedule_date(context)
    if first is None:
        return 0.0
    return ((now or dt.datetime.now(dt.UTC)) - first).total_seconds()


def acks_ready(context: dict[str, Any], mesh_conn_id: str) -> bool:
    """The poke: True when ``check_acks`` should run now (see the module docstring)."""
    from caldicott_airflow.connections import state_engine

    letters = waiting_letters(state_engine())
    if not letters:
        return True
    wait = int(context["params"].get("ack_wait_seconds") or 0)
    waited = waited_seconds(context)
    if waited >= wait:
        log.info("%d MESH letter(s) still without a business ack after %.0f s: checking now", len(letters), waited)
        return True
    from caldicott_airflow.hooks.mesh import MeshHook

    with MeshHook(mesh_conn_id) as client:
        answered = business_acks_in_inbox(client, letters)
    log.info("%d of %d waiting MESH letter(s) have a business ack in the inbox (waited %.0f of %d s)",
             len(answered), len(letters), waited, wait)
    return answered >= letters
