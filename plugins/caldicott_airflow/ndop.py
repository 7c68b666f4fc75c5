"""Airflow-side configuration of the national data opt-out check: the cache key, the service mailbox, MESH.

* cache key: the password of connection ``caldicott_ndop_cache_key`` (any secrets backend, or
  ``AIRFLOW_CONN_CALDICOTT_NDOP_CACHE_KEY``), at least 32 bytes, e.g. ``python -c "import secrets;
  print(secrets.token_urlsafe(48))"``. It keys the opt-out cache (HMAC-SHA256) and seals outstanding requests.
  No key (or a short one, or the example placeholder): the task fails at once, naming the connection, and no
  check, extract or research package is built;
* NHS England's opt-out service mailbox: ``CALDICOTT_NDOP_MAILBOX`` (differs by environment). The release gateway
  reads the same setting and refuses a request to any other mailbox (``caldicott.policy.purposes``);
* Caldicott's MESH mailbox: connection ``CALDICOTT_MESH_CONN_ID`` or ``caldicott_mesh``
  (:class:`~caldicott_airflow.hooks.mesh.MeshHook`).

There is no test double here: tests and the demo answer the check over the mesh-sandbox
(``devtools/peers/ndop_responder.py``), or inject a double from ``tests/`` themselves.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from caldicott.policy.ndop_check import NdopChecker
    from sqlalchemy import Engine

CACHE_KEY_CONN_ID = "caldicott_ndop_cache_key"


def ndop_cache_key() -> bytes:
    """The opt-out cache key from the secrets backend; fails the task (no retry) when absent or too short."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowFailException, AirflowNotFoundException
    from caldicott.policy.ndop_cache import MIN_KEY_BYTES

    try:
        secret = (BaseHook.get_connection(CACHE_KEY_CONN_ID).password or "").encode()
    except AirflowNotFoundException:
        secret = b""
    if len(secret) < MIN_KEY_BYTES or secret.startswith(b"CHANGE-ME"):   # absent, short, or the example placeholder
        raise AirflowFailException(
            f"national data opt-out check refused: set the password of Airflow connection {CACHE_KEY_CONN_ID!r} "
            f"to a secret of at least {MIN_KEY_BYTES} bytes (it keys the opt-out cache); nothing that needs the "
            "opt-out is checked or built without it")
    return secret


def service_mailbox() -> str:
    """NHS England's opt-out service mailbox (``CALDICOTT_NDOP_MAILBOX``); fails the task when unset."""
    from airflow.sdk.exceptions import AirflowFailException
    from caldicott.policy.purposes import NDOP_MAILBOX_SETTING

    mailbox = os.environ.get(NDOP_MAILBOX_SETTING, "").strip()
    if not mailbox:
        raise AirflowFailException(f"no NDOP service mailbox configured ({NDOP_MAILBOX_SETTING})")
    return mailbox


def ndop_label() -> str:
    """What answers the check, for the opt-out statement."""
    from caldicott.transport.ndop_mesh import WORKFLOW_ID

    return f"MESH {service_mailbox()} ({WORKFLOW_ID})"


@contextlib.contextmanager
def ndop_checker(state: Engine, *, mesh: bool = True) -> Iterator[tuple[NdopChecker, str]]:
    """Yields ``(checker, label)``: an :class:`~caldicott.policy.ndop_check.NdopChecker` keyed with the cache key,
    over MESH (``mesh=False``: it reads the cache only). A gateway refusal fails the task without retrying."""
    from airflow.sdk.exceptions import AirflowFailException
    from caldicott.policy.ndop import NdopRefused
    from caldicott.policy.ndop_check import NdopChecker

    key = ndop_cache_key()
    if not mesh:
        yield NdopChecker(state, key), ndop_label()
        return
    from caldicott.transport.ndop_mesh import MeshNdopTransport

    from caldicott_airflow.hooks.mesh import MeshHook

    mailbox = service_mailbox()
    hook = MeshHook(os.environ.get("CALDICOTT_MESH_CONN_ID", "caldicott_mesh"))
    try:
        transport = MeshNdopTransport(hook.get_conn(), mailbox)
        try:
            yield NdopChecker(state, key, transport), transport.label
        except NdopRefused as exc:   # a policy refusal needs a person, not a retry
            raise AirflowFailException(str(exc)) from None
    finally:
        hook.close()
