"""The sending service's identity (name, address, ODS code, named clinician) from the deployment's configuration.

Why an adapter: the identity goes on every letter and into every GP Connect bundle, so it must be the deployment's
own, never a built-in placeholder (``caldicott.letters.service`` has no defaults). It is read from the Airflow
Variable ``caldicott_service`` (JSON; from a secrets backend, ``AIRFLOW_VAR_CALDICOTT_SERVICE``, or the metadata
database), one value so the whole identity is set, reviewed and rotated together. Missing or malformed: the task
fails at once (no retry: retrying cannot fix configuration) with a message naming the Variable and the field.
Shape and example: docs/gp_letters.md, "The sending service".
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from caldicott.letters.service import Service

VARIABLE = "caldicott_service"


def sending_service() -> Service:
    """The :class:`~caldicott.letters.service.Service` configured in Variable ``caldicott_service``.

    Raises ``AirflowFailException`` naming the Variable (and the field) when it is unset or not valid."""
    from airflow.sdk import Variable
    from airflow.sdk.exceptions import AirflowFailException
    from caldicott.letters.service import ServiceConfigError, service_from_config

    raw = Variable.get(VARIABLE, default=None)
    if raw is None or not str(raw).strip():
        raise AirflowFailException(
            f"Airflow Variable {VARIABLE!r} is not set: the sending service's identity (name, address, phone, "
            f"ods_code, clinician) is configuration with no default; set it as JSON (docs/gp_letters.md)")
    try:
        data = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        raise AirflowFailException(f"Airflow Variable {VARIABLE!r} is not valid JSON") from None
    try:
        return service_from_config(data)
    except ServiceConfigError as exc:
        raise AirflowFailException(f"Airflow Variable {VARIABLE!r}: {exc}") from None
