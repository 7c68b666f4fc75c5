"""Caldicott: the domain of the talking-therapies disclosure flows, with no Airflow import.

Everything under this package is plain Python so it can be tested, benchmarked and reasoned about
without a scheduler. Airflow adapters live in ``plugins/caldicott_airflow``; DAG files in ``dags/``.
"""

__version__ = "0.1.0"
