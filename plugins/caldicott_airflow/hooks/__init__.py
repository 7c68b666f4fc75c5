"""Airflow hooks for Caldicott's transports (MESH)."""
