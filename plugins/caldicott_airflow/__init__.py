"""Caldicott's Airflow adapters: connections to engines, DAG defaults, notifiers, hooks.

This package is on ``sys.path`` because Airflow adds the plugins folder to it (and the tests add it
too). Nothing here holds domain logic: that lives in ``include/caldicott`` and has no Airflow import.
"""
