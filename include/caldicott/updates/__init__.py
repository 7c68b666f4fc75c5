"""Session updates and monthly activity for referrers (flow ``referrer_updates``, issue 4).

``build``: reads the records source and writes csv-v1 / activity-csv-v1 bytes under the policy in
:mod:`caldicott.policy.referrer_updates`; ``fhir``: the same session rows as a FHIR R4 Bundle
(fhir-r4-v1). ``deliver``: per-contract planning, ledger intents and release through the gateway.
No Airflow import; the DAG is ``dags/referrer_updates.py``.
"""
