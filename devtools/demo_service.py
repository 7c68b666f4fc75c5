"""The demo's sending service: the synthetic identity the local Airflow, the tests and the benches sign letters with.

Production has no such default (``caldicott.letters.service``: every field required; the Airflow Variable
``caldicott_service``, docs/gp_letters.md). These values are invented: ODS code ``ZZZ01`` and SDS user id
``999000000001`` belong to no one. ``devtools.airflow_env`` hands :data:`DEMO_SERVICE` to the local Airflow as
``AIRFLOW_VAR_CALDICOTT_SERVICE``; tests and benches build it with :func:`demo_service`.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from caldicott.letters.service import Service

#: The Airflow Variable the DAGs read the sending service from (``caldicott_airflow.service.VARIABLE``).
VARIABLE = "caldicott_service"

DEMO_SERVICE: dict = {
    "name": "NHS Talking Therapies (Synthetic Service)",
    "address": "1 Example Street, Leeds LS1 1AA",
    "phone": "0113 000 0000",
    "ods_code": "ZZZ01",
    "clinician": {"prefix": "Dr", "given": "Alex", "family": "Example",
                  "role": "Clinical Lead, Consultant Clinical Psychologist", "sds_user_id": "999000000001",
                  "phone": "0113 000 0001"},
}


def demo_service() -> Service:
    """:data:`DEMO_SERVICE` as the domain's :class:`~caldicott.letters.service.Service`."""
    from caldicott.letters.service import service_from_config

    return service_from_config(DEMO_SERVICE)


def airflow_env() -> dict[str, str]:
    """``AIRFLOW_VAR_CALDICOTT_SERVICE`` for a local Airflow (the Variable, from the environment)."""
    return {f"AIRFLOW_VAR_{VARIABLE.upper()}": json.dumps(DEMO_SERVICE)}
