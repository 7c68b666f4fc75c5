#!/bin/bash
# Runs once, when the PostgreSQL volume is first initialised: Caldicott's own state database and its
# owner, separate from Airflow's metadata database. The password comes from .env (CALDICOTT_STATE_PASSWORD).
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
     -v pw="$CALDICOTT_STATE_PASSWORD" <<'SQL'
CREATE ROLE caldicott LOGIN PASSWORD :'pw';
CREATE DATABASE caldicott_state OWNER caldicott;
REVOKE ALL ON DATABASE caldicott_state FROM PUBLIC;
SQL
