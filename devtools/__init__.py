"""Developer tooling: the local Airflow environment, the stand-in peers, the demo and the test stack.

Not part of the deployed package. ``make demo``, ``make test`` and ``make up`` call into here.
"""
