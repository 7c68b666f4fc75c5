"""The national data opt-out (NDOP): who has opted out, checked with NHS England, cached for a short time.

NHS England's "Check for national data opt-outs" service works over MESH (workflow ``SPINE_NTT_UPHOLDING``):
send a ``.dat`` file of NHS numbers, one per line, each followed by a comma, LF line endings; the reply
(within about an hour) is the same list minus those who opted out. So the request is kept to derive who
opted out. One invalid NHS number fails the whole file, so only valid numbers are ever sent.
Opt-out status may be cached only for a limited time and is never stored on the record: the cache here is
a separate state table keyed by a hash of the NHS number, with an expiry.

This module is the reusable filter for every flow the opt-out applies to (planning / commissioner extracts
here; research and other non-direct-care disclosures in ``caldicott.disclosure``)::

    from caldicott.policy.ndop import NdopChecker, filter_opted_out
    checker = NdopChecker(state_engine, transport)        # transport: anything with send_request/fetch_reply
    status = checker.check(nhs_numbers, request_id)        # sends what the cache does not cover
    if status.complete: kept = filter_opted_out(frame, "nhs_number", status.opted_out)

The transport is deliberately small (:class:`NdopTransport`: send request bytes, fetch reply bytes), so
the MESH client (``caldicott.transport.mesh``) or a test double plugs in without this module knowing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd
from sqlalchemy import Boolean, Column, DateTime, Engine, String, Table, delete, select

from caldicott.db import insert_ignore, utcnow
from caldicott.state.schema import metadata

WORKFLOW_ID = "SPINE_NTT_UPHOLDING"
DEFAULT_TTL = dt.timedelta(days=7)

#: Opt-out status with an expiry; keyed by sha256 of the NHS number, never stored on a patient record.
ndop_cache = Table(
    "ndop_cache",
    metadata,
    Column("nhs_hash", String(64), primary_key=True, comment="sha256 of the NHS number"),
    Column("opted_out", Boolean, nullable=False),
    Column("checked_at", DateTime, nullable=False),
    Column("expires_at", DateTime, nullable=False, index=True),
    Column("request_id", String(100), nullable=False, comment="the check request that established it"),
)

#: Outstanding requests: request id -> what was asked (hashes) so the reply can be turned into opt-outs.
ndop_request = Table(
    "ndop_request",
    metadata,
    Column("request_id", String(100), primary_key=True),
    Column("message_ref", String(200), comment="transport reference (MESH message id)"),
    Column("numbers_file", String(500), comment="path of the request file, kept until the reply arrives"),
    Column("sent_at", DateTime, nullable=False),
    Column("replied_at", DateTime),
)


class NdopError(Exception):
    """The check failed (invalid request, rejected file). Messages hold counts, never NHS numbers."""


@runtime_checkable
class NdopTransport(Protocol):
    """How requests reach NHS England and replies come back (MESH in production)."""

    def send_request(self, payload: bytes, *, request_id: str) -> str:
        """Send one ``.dat`` request; return the transport's message reference."""
        ...

    def fetch_reply(self, message_ref: str) -> bytes | None:
        """The reply to ``message_ref`` if it has arrived (and acknowledge it), else None."""
        ...


def nhs_hash(numbers: Iterable[str]) -> list[str]:
    return [hashlib.sha256(str(n).encode()).hexdigest() for n in numbers]


def request_bytes(numbers: Iterable[str]) -> bytes:
    """The ``.dat`` request: unique numbers, sorted, ``NNNNNNNNNN,`` per line, LF endings.

    Raises NdopError if any number is not a valid NHS number (one bad number fails the whole file).
    """
    from caldicott.dataset.rules import nhs_invalid  # vectorised check shared with the data set rules

    s = pd.Series(sorted(set(numbers)), dtype="string[pyarrow]")
    bad = nhs_invalid(s) | s.isna().to_numpy()
    if bad.any():
        raise NdopError(f"{int(bad.sum())} invalid NHS number(s) in an opt-out request; not sent")
    return "".join(f"{n},\n" for n in s.tolist()).encode("ascii")


def parse_reply(payload: bytes) -> set[str]:
    """NHS numbers in a reply file (same format as the request)."""
    text = payload.decode("ascii").replace("\r\n", "\n")
    return {line.rstrip(",").strip() for line in text.split("\n") if line.strip().rstrip(",")}


def opted_out_from(request: bytes, reply: bytes) -> set[str]:
    """Those sent and not returned: the patients who opted out."""
    return parse_reply(request) - parse_reply(reply)


def filter_opted_out(frame: pd.DataFrame, nhs_column: str, opted_out: set[str]) -> pd.DataFrame:
    """``frame`` without the rows whose NHS number opted out (rows without a number are kept by the caller's
    choice: pass them through ``drop_unchecked``)."""
    if not opted_out:
        return frame
    return frame.loc[~frame[nhs_column].isin(list(opted_out)).to_numpy(dtype=bool)]


@dataclass
class NdopStatus:
    """Result of a check: the opted-out numbers among those asked, and whether every number is known."""

    opted_out: set[str] = field(default_factory=set)
    pending: int = 0            # numbers still awaiting a reply
    from_cache: int = 0
    sent: int = 0
    request_id: str | None = None

    @property
    def complete(self) -> bool:
        return self.pending == 0

    def counts(self) -> dict:
        return {"opted_out": len(self.opted_out), "pending": self.pending, "from_cache": self.from_cache,
                "sent": self.sent}


class NdopChecker:
    """Checks NHS numbers against the opt-out, using and refreshing the time-limited cache."""

    def __init__(self, engine: Engine, transport: NdopTransport, *, ttl: dt.timedelta = DEFAULT_TTL,
                 work_dir: Path | None = None) -> None:
        self.engine = engine
        self.transport = transport
        self.ttl = ttl
        self.work_dir = work_dir or Path(os.environ.get("CALDICOTT_OUTPUT_DIR", ".")) / "ndop"

    def cached(self, numbers: list[str], now: dt.datetime | None = None) -> dict[str, bool]:
        """number -> opted_out for the numbers with an unexpired cache entry."""
        now = now or utcnow()
        hashes = dict(zip(nhs_hash(numbers), numbers, strict=True))
        out: dict[str, bool] = {}
        keys = list(hashes)
        with self.engine.connect() as conn:
            for i in range(0, len(keys), 900):
                q = select(ndop_cache.c.nhs_hash, ndop_cache.c.opted_out).where(
                    ndop_cache.c.nhs_hash.in_(keys[i:i + 900]), ndop_cache.c.expires_at > now)
                for h, o in conn.execute(q):
                    out[hashes[h]] = bool(o)
        return out

    def _request_path(self, request_id: str) -> Path:
        return self.work_dir / f"{request_id}.dat"

    def send(self, numbers: list[str], request_id: str) -> NdopStatus:
        """Send a request for the numbers the cache does not cover (once per ``request_id``)."""
        numbers = sorted({str(n) for n in numbers})
        known = self.cached(numbers)
        todo = [n for n in numbers if n not in known]
        status = NdopStatus(opted_out={n for n, o in known.items() if o}, from_cache=len(known),
                            request_id=request_id)
        if not todo:
            return status
        with self.engine.connect() as conn:
            existing = conn.execute(select(ndop_request).where(ndop_request.c.request_id == request_id)).first()
        if existing is None:
            payload = request_bytes(todo)
            self.work_dir.mkdir(parents=True, exist_ok=True)
            path = self._request_path(request_id)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(payload)
            ref = self.transport.send_request(payload, request_id=request_id)
            with self.engine.begin() as conn:
                conn.execute(insert_ignore(conn, ndop_request), [{
                    "request_id": request_id, "message_ref": ref, "numbers_file": str(path), "sent_at": utcnow()}])
        status.sent = len(todo)
        status.pending = len(todo)
        return status

    def collect(self, request_id: str) -> bool:
        """Fetch the reply to ``request_id`` if it arrived; cache the outcome. True when done."""
        with self.engine.connect() as conn:
            row = conn.execute(select(ndop_request).where(ndop_request.c.request_id == request_id)).mappings().first()
        if row is None:
            return True   # nothing was sent: everything came from the cache
        if row["replied_at"] is not None:
            return True
        reply = self.transport.fetch_reply(row["message_ref"])
        if reply is None:
            return False
        path = Path(row["numbers_file"])
        request = path.read_bytes()
        asked = parse_reply(request)
        out = asked - parse_reply(reply)
        now = utcnow()
        rows = [{"nhs_hash": h, "opted_out": n in out, "checked_at": now, "expires_at": now + self.ttl,
                 "request_id": request_id} for n, h in zip(sorted(asked), nhs_hash(sorted(asked)), strict=True)]
        with self.engine.begin() as conn:
            hashes = [r["nhs_hash"] for r in rows]
            for i in range(0, len(hashes), 900):
                conn.execute(delete(ndop_cache).where(ndop_cache.c.nhs_hash.in_(hashes[i:i + 900])))
            if rows:
                conn.execute(ndop_cache.insert(), rows)
            conn.execute(ndop_request.update().where(ndop_request.c.request_id == request_id)
                         .values(replied_at=now))
        path.unlink(missing_ok=True)  # the request list is not kept once answered
        return True

    def status(self, numbers: list[str]) -> NdopStatus:
        """Opt-out status of ``numbers`` from the cache alone (after :meth:`collect`)."""
        numbers = sorted({str(n) for n in numbers})
        known = self.cached(numbers)
        return NdopStatus(opted_out={n for n, o in known.items() if o}, pending=len(numbers) - len(known),
                          from_cache=len(known))

    def purge_expired(self, now: dt.datetime | None = None) -> int:
        with self.engine.begin() as conn:
            return conn.execute(delete(ndop_cache).where(ndop_cache.c.expires_at <= (now or utcnow()))).rowcount


# ---- a test double of NHS England's service ----------------------------------------------------------------

class FakeNdopService:
    """TEST DOUBLE of the NDOP service (not NHS England, not MESH): answers from a list it was given.

    File-backed so the request and the reply survive between Airflow task processes: ``send_request``
    writes the reply at once into ``root``; ``fetch_reply`` reads it. Used by the tests, the demo and the
    e2e test when no MESH peer is configured; the DAG logs that a test double answered.
    """

    is_test_double = True

    def __init__(self, root: Path, opted_out: Iterable[str] = (), *, share: float = 0.0) -> None:
        self.root = Path(root)
        self.opted_out = {str(n) for n in opted_out}
        self.share = share          # also opt out this share of numbers, chosen by hash (deterministic)

    def _is_out(self, numbers: list[str]) -> np.ndarray:
        explicit = np.array([n in self.opted_out for n in numbers], dtype=bool)
        if self.share <= 0:
            return explicit
        h = np.array([int(x[:8], 16) for x in nhs_hash(numbers)], dtype=np.int64)
        return explicit | (h < self.share * 0xFFFFFFFF)

    def send_request(self, payload: bytes, *, request_id: str) -> str:
        if not payload.endswith(b"\n") or b"\r" in payload:
            raise NdopError("request file must use LF line endings")
        asked = sorted(parse_reply(payload))
        out = self._is_out(asked)
        self.root.mkdir(parents=True, exist_ok=True)
        ref = f"fake-{hashlib.sha256(request_id.encode()).hexdigest()[:16]}"
        reply = "".join(f"{n},\n" for n, o in zip(asked, out, strict=True) if not o).encode()
        (self.root / f"{ref}.reply").write_bytes(reply)
        return ref

    def fetch_reply(self, message_ref: str) -> bytes | None:
        p = self.root / f"{message_ref}.reply"
        return p.read_bytes() if p.exists() else None


# ---- over MESH ---------------------------------------------------------------------------------------------

class MeshNdopTransport:
    """NDOP requests over MESH (workflow ``SPINE_NTT_UPHOLDING``) with a ``mesh_client.MeshClient``.

    The request goes to ``service_mailbox`` as ``<request_id>.dat``; the reply is recognised in the inbox by
    its workflow (``SPINE_NTT_UPHOLDING`` or ``..._RESPONSE``) and the same file name, downloaded and
    acknowledged. Other messages in the inbox are left alone (other flows read them).
    """

    def __init__(self, client, service_mailbox: str, workflow_id: str = WORKFLOW_ID) -> None:
        self.client = client
        self.mailbox = service_mailbox
        self.workflow_id = workflow_id

    def send_request(self, payload: bytes, *, request_id: str) -> str:
        filename = f"{request_id}.dat"
        message_id = self.client.send_message(self.mailbox, payload, workflow_id=self.workflow_id,
                                              local_id=request_id, filename=filename,
                                              content_type="text/plain")
        return f"{message_id}:{filename}"

    def fetch_reply(self, message_ref: str) -> bytes | None:
        filename = message_ref.split(":", 1)[1]
        for message_id in list(self.client.iterate_message_ids()):
            msg = self.client.retrieve_message(message_id)
            try:
                workflow = getattr(msg, "workflow_id", "") or ""
                name = getattr(msg, "filename", "") or ""
                if not workflow.startswith(self.workflow_id) or name != filename:
                    continue
                body = msg.read()
            finally:
                msg.close()
            self.client.acknowledge_message(message_id)
            return body
        return None
