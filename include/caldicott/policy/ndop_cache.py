"""The time-limited opt-out cache and the sealed outstanding requests, under the deployment's secret; the purge.

Why keyed: the cache must be looked up by NHS number, but a plain SHA-256 of a 10-digit number can be reversed
by trying every number (about 10^9 valid ones: minutes on a laptop). The key here is HMAC-SHA256 of the number
under a key derived from a secret the state database does not hold (the Airflow connection
``caldicott_ndop_cache_key``, read by the plugin). No secret, no check: :class:`NdopKeys` refuses a missing or
short one (:class:`~caldicott.policy.ndop.NdopKeyMissing`).

Why sealed: the reply lists the numbers that did *not* opt out, so the request (the numbers asked) is needed
until the reply arrives. It is kept in the state database AES-256-GCM sealed under a second key derived from the
same secret (bound to its file id), never as a file on disk, and erased when the reply is cached or the request
goes stale (:func:`purge`).

:func:`purge` removes expired answers and stale requests' sealed copies; the opt-out check runs it each time
it sends or collects, and the daily ``records_quality`` DAG runs it too (``purge_ndop_cache``), so expired
answers do not wait for the next monthly check.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypedDict

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Engine, delete, func, select, update

from caldicott.db import AnyRow, insert_ignore, utcnow
from caldicott.policy.ndop import STALE_REQUEST, NdopError, NdopKeyMissing
from caldicott.policy.state_tables import ndop_cache, ndop_request_file

#: Shortest secret accepted (bytes of the connection's password).
MIN_KEY_BYTES = 32
_CHUNK = 900   # bound parameters per IN (...) list: under SQLite's limit


class NdopKeys:
    """The two keys derived from the deployment's secret: one keys the cache, one seals outstanding requests."""

    def __init__(self, secret: bytes | None) -> None:
        if not secret or len(secret) < MIN_KEY_BYTES:
            raise NdopKeyMissing(f"national data opt-out: no cache key of at least {MIN_KEY_BYTES} bytes; "
                                 "the check does not run without one")
        self._cache = hmac.new(secret, b"caldicott ndop cache key v1", hashlib.sha256).digest()
        self._seal = AESGCM(hmac.new(secret, b"caldicott ndop request seal v1", hashlib.sha256).digest())

    def cache_keys(self, numbers: Iterable[str]) -> list[str]:
        """HMAC-SHA256 (hex) of each NHS number: the cache's primary key."""
        key = self._cache
        return [hmac.new(key, str(n).encode(), hashlib.sha256).hexdigest() for n in numbers]

    def seal(self, payload: bytes, file_id: str) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._seal.encrypt(nonce, payload, file_id.encode())

    def unseal(self, sealed: bytes, file_id: str) -> bytes:
        try:
            return self._seal.decrypt(sealed[:12], sealed[12:], file_id.encode())
        except Exception as exc:   # InvalidTag: another key (rotated?) or another file's bytes
            raise NdopError(f"request {file_id}: its sealed copy does not open with this cache key") from exc


def lookup(engine: Engine, keys: Sequence[str], now: dt.datetime | None = None) -> dict[str, bool]:
    """cache key -> opted out, for the keys with an unexpired answer."""
    now = now or utcnow()
    out: dict[str, bool] = {}
    with engine.connect() as conn:
        for i in range(0, len(keys), _CHUNK):
            q = select(ndop_cache.c.nhs_hash, ndop_cache.c.opted_out).where(
                ndop_cache.c.nhs_hash.in_(list(keys[i:i + _CHUNK])), ndop_cache.c.expires_at > now)
            out.update((k, bool(o)) for k, o in conn.execute(q))
    return out


@dataclass(frozen=True)
class RequestFile:
    """One request file sent (or about to be sent) to NHS England."""

    file_id: str
    request_id: str
    item_id: str
    numbers: int
    sealed: bytes | None

    @property
    def filename(self) -> str:
        return f"{self.file_id}.dat"


def _file(row: AnyRow) -> RequestFile:
    return RequestFile(row.file_id, row.request_id, row.item_id, row.numbers, row.sealed)


def open_files(engine: Engine, request_id: str) -> list[RequestFile]:
    """The request id's files not yet answered, abandoned or refused, oldest first."""
    q = (select(ndop_request_file).where(ndop_request_file.c.request_id == request_id,
                                         ndop_request_file.c.closed_at.is_(None))
         .order_by(ndop_request_file.c.seq))
    with engine.connect() as conn:
        return [_file(r) for r in conn.execute(q)]


def next_file_id(engine: Engine, request_id: str) -> str:
    """``<request id>-<n>``: deterministic, so a check that crashed before recording its file plans the same one."""
    with engine.connect() as conn:
        n = conn.execute(select(func.count()).select_from(ndop_request_file)
                         .where(ndop_request_file.c.request_id == request_id)).scalar_one()
    return f"{request_id}-{n + 1}"


def add_file(engine: Engine, keys: NdopKeys, *, file_id: str, request_id: str, item_id: str,
             payload: bytes, numbers: int) -> None:
    """Record a request file (sealed) before it is sent; a file already recorded is left as it is."""
    with engine.begin() as conn:
        conn.execute(insert_ignore(conn, ndop_request_file), [{
            "file_id": file_id, "request_id": request_id, "seq": int(file_id.rsplit("-", 1)[1]),
            "item_id": item_id, "numbers": numbers, "sealed": keys.seal(payload, file_id), "created_at": utcnow()}])


def close_file(engine: Engine, file_id: str, outcome: str) -> None:
    """Close a file without answers (refused by the gateway): its sealed copy is erased."""
    with engine.begin() as conn:
        conn.execute(update(ndop_request_file).where(ndop_request_file.c.file_id == file_id,
                                                     ndop_request_file.c.closed_at.is_(None))
                     .values(closed_at=utcnow(), outcome=outcome, sealed=None))


def store_answers(engine: Engine, file_id: str, request_id: str, answers: dict[str, bool],
                  ttl: dt.timedelta) -> int:
    """Cache ``answers`` (cache key -> opted out) and close the file they answer, in one transaction."""
    now = utcnow()
    rows = [{"nhs_hash": k, "opted_out": o, "checked_at": now, "expires_at": now + ttl, "request_id": request_id}
            for k, o in answers.items()]
    keys = list(answers)
    with engine.begin() as conn:
        for i in range(0, len(keys), _CHUNK):
            conn.execute(delete(ndop_cache).where(ndop_cache.c.nhs_hash.in_(keys[i:i + _CHUNK])))
        if rows:
            conn.execute(ndop_cache.insert(), rows)
        conn.execute(update(ndop_request_file).where(ndop_request_file.c.file_id == file_id)
                     .values(closed_at=now, outcome="replied", sealed=None))
    return len(rows)


class PurgeCounts(TypedDict):
    """What :func:`purge` removed (the ``records_quality`` DAG's ``purge_ndop_cache`` task returns it to XCom)."""

    expired_answers: int
    stale_requests: int


def purge(engine: Engine, now: dt.datetime | None = None, *, stale_after: dt.timedelta = STALE_REQUEST
          ) -> PurgeCounts:
    """Remove expired answers; abandon requests unanswered for ``stale_after`` (their sealed copy is erased).

    Returns counts only. Needs no key: expiry is in clear, and erasing needs nothing to open.
    """
    now = now or utcnow()
    with engine.begin() as conn:
        expired = conn.execute(delete(ndop_cache).where(ndop_cache.c.expires_at <= now)).rowcount
        stale = conn.execute(update(ndop_request_file).where(
            ndop_request_file.c.closed_at.is_(None), ndop_request_file.c.created_at <= now - stale_after)
            .values(closed_at=now, outcome="stale", sealed=None)).rowcount
    return {"expired_answers": int(expired or 0), "stale_requests": int(stale or 0)}
