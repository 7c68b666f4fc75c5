"""Airflow sign-in for Caldicott: the organisation's directory (LDAP / Active Directory) and its groups as roles.

Loaded by the FAB auth manager (``caldicott_airflow.auth.CaldicottFabAuthManager``) from ``[fab] config_file``
(``AIRFLOW__FAB__CONFIG_FILE``); docker-compose.yaml mounts this file read-only. Every site-specific value comes
from the environment, and there are **no defaults that let anyone in**: a missing value stops the api-server;
a directory user in none of the mapped groups signs in with the empty role ``Public`` and sees nothing.
Settings are Flask-AppBuilder's (https://flask-appbuilder.readthedocs.io/en/latest/security.html, "Authentication:
LDAP" and "Role based"); docs/deployment.md "Sign-in and roles" explains each role and the OIDC alternative.

Environment (docs/deployment.md has examples for Active Directory and OpenLDAP):

* ``CALDICOTT_LDAP_URL`` — ``ldaps://host:636``, or ``ldap://host:389`` with ``CALDICOTT_LDAP_START_TLS=true``.
  Plain LDAP (passwords in clear) is refused. The server certificate is always verified (TLS demand; no
  self-signed shortcut) against ``CALDICOTT_LDAP_CA_FILE`` if set, else the system's trust store.
* ``CALDICOTT_LDAP_BIND_DN`` / ``CALDICOTT_LDAP_BIND_PASSWORD`` — a read-only service account that looks people up
  ("indirect search bind"); each person's password is then checked by binding as them.
* ``CALDICOTT_LDAP_SEARCH_BASE`` — where people are; ``CALDICOTT_LDAP_UID_FIELD`` — their user name attribute
  (``uid``; ``sAMAccountName`` in AD); optional ``CALDICOTT_LDAP_SEARCH_FILTER``, e.g. only enabled accounts.
* ``CALDICOTT_LDAP_GROUP_APPROVERS``, ``_REQUESTERS``, ``_VIEWERS``, ``_OPERATORS`` (required) and ``_ADMINS``
  (optional): group DNs exactly as the directory returns them in ``memberOf`` (``;`` between several).
  ``CALDICOTT_LDAP_NESTED_GROUPS=true`` follows nested groups (Active Directory only).
"""

from __future__ import annotations

import os

from airflow.providers.fab.www.security import permissions as p
from caldicott_airflow.auth import APPROVER_ROLE
from flask_appbuilder.const import AUTH_LDAP


def _required(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise RuntimeError(f"{name} is not set: Airflow sign-in needs it (docs/deployment.md, 'Sign-in and roles')")
    return value


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def _dns(name: str, *, required: bool = True) -> list[str]:
    raw = _required(name) if required else os.environ.get(name, "")
    return [dn.strip() for dn in raw.split(";") if dn.strip()]


# ---- roles -------------------------------------------------------------------------------------------------------
# Names from FAB's own constants (airflow/providers/fab/www/security/permissions.py). DAG-level access: a role sees
# a DAG only with can_read on "DAG:<dag_id>"; a global resource such as "DAG Runs" then applies only to the DAGs
# it can read, and changing anything under a DAG (trigger, clear, mark) also needs can_edit on "DAG:<dag_id>"
# (FabAuthManager.is_authorized_dag). So no Caldicott role holds the global "DAGs" resource, and a new DAG is
# visible to nobody but Admin until it is added here (fail closed).
DISCLOSURE_DAG = "disclosure_request"
ROUTINE_DAGS = ("records_quality", "gp_letters", "referrer_updates", "monthly_dataset")
REQUESTER_ROLE, VIEWER_ROLE, OPERATOR_ROLE = "Disclosure requester", "Caldicott viewer", "Caldicott operator"
NO_ACCESS_ROLE = "Public"   # FAB's built-in empty role: a directory user in none of the groups gets only this
# (Flask loads every UPPER-CASE name of this file into its config: helpers below are _private.)

_R, _E, _C, _MENU = p.ACTION_CAN_READ, p.ACTION_CAN_EDIT, p.ACTION_CAN_CREATE, p.ACTION_CAN_ACCESS_MENU


def _dag(dag_id: str) -> str:
    return p.resource_name(dag_id, p.RESOURCE_DAG)        # "DAG:<dag_id>"


def _runs(dag_id: str) -> str:
    return p.resource_name(dag_id, p.RESOURCE_DAG_RUN)    # "DAG Run:<dag_id>"


#: Enough to open the UI and read about the DAGs a role can see (nothing about other DAGs).
_BASE = [(_R, p.RESOURCE_WEBSITE), (_R, p.RESOURCE_MY_PROFILE),
         *[(_MENU, r) for r in (p.RESOURCE_BROWSE_MENU, p.RESOURCE_DAG, p.RESOURCE_DAG_RUN,
                                p.RESOURCE_TASK_INSTANCE, p.RESOURCE_DOCS_MENU, p.RESOURCE_DOCS)]]
_READ_DAG_DETAILS = [(_R, r) for r in (p.RESOURCE_DAG_RUN, p.RESOURCE_TASK_INSTANCE, p.RESOURCE_TASK_LOG,
                                       p.RESOURCE_XCOM, p.RESOURCE_DAG_CODE, p.RESOURCE_DAG_DEPENDENCIES,
                                       p.RESOURCE_DAG_VERSION, p.RESOURCE_DAG_WARNING, p.RESOURCE_HITL_DETAIL)]
_READ_PLATFORM = [*[(_R, r) for r in (p.RESOURCE_POOL, p.RESOURCE_ASSET, p.RESOURCE_ASSET_ALIAS,
                                      p.RESOURCE_IMPORT_ERROR, p.RESOURCE_JOB, p.RESOURCE_CLUSTER_ACTIVITY,
                                      p.RESOURCE_BACKFILL)],
                  (_MENU, p.RESOURCE_ASSET), (_MENU, p.RESOURCE_CLUSTER_ACTIVITY)]
_ROUTINE = [(_R, _dag(d)) for d in ROUTINE_DAGS]

CALDICOTT_ROLES: dict[str, list[tuple[str, str]]] = {
    # Service managers: read disclosure_request and answer its Required Actions when CALDICOTT_APPROVERS names
    # them (CaldicottFabAuthManager.is_authorized_hitl_task). No trigger (no run can_create), no clearing or
    # marking (no edit on runs / task instances / the DAG: no pausing either), no connections or Variables.
    APPROVER_ROLE: [*_BASE, *_READ_DAG_DETAILS, (_R, _dag(DISCLOSURE_DAG)), (_R, _runs(DISCLOSURE_DAG)),
                    (_E, p.RESOURCE_HITL_DETAIL), (_MENU, p.RESOURCE_HITL_DETAIL)],
    # Named people who file disclosure requests: trigger disclosure_request and follow their runs. FAB needs
    # can_edit on a DAG to trigger it (which also lets them pause it); they cannot answer (no HITL edit).
    REQUESTER_ROLE: [*_BASE, *_READ_DAG_DETAILS, (_R, _dag(DISCLOSURE_DAG)), (_E, _dag(DISCLOSURE_DAG)),
                     (_R, _runs(DISCLOSURE_DAG)), (_C, _runs(DISCLOSURE_DAG))],
    # Everyone else who looks: the routine DAGs only; disclosure_request does not exist for them.
    VIEWER_ROLE: [*_BASE, *_READ_DAG_DETAILS, *_READ_PLATFORM, *_ROUTINE],
    # On-call: run, clear and mark the routine DAGs (can_edit on each routine DAG is what lets the global run and
    # task instance actions apply to it); nothing on disclosure_request, connections or Variables.
    OPERATOR_ROLE: [*_BASE, *_READ_DAG_DETAILS, *_READ_PLATFORM, *_ROUTINE, *[(_E, _dag(d)) for d in ROUTINE_DAGS],
                    (_C, p.RESOURCE_DAG_RUN), (_E, p.RESOURCE_DAG_RUN), (_E, p.RESOURCE_TASK_INSTANCE)],
    NO_ACCESS_ROLE: [],
}

# ---- sign-in: LDAP / Active Directory ----------------------------------------------------------------------------
AUTH_TYPE = AUTH_LDAP
AUTH_LDAP_SERVER = _required("CALDICOTT_LDAP_URL")
AUTH_LDAP_USE_TLS = _flag("CALDICOTT_LDAP_START_TLS")          # START_TLS on an ldap:// URL
if not (AUTH_LDAP_SERVER.lower().startswith("ldaps://") or AUTH_LDAP_USE_TLS):
    raise RuntimeError("CALDICOTT_LDAP_URL must be ldaps://, or ldap:// with CALDICOTT_LDAP_START_TLS=true: "
                       "directory passwords are never sent in clear")
AUTH_LDAP_ALLOW_SELF_SIGNED = False        # never skip certificate checks ...
AUTH_LDAP_TLS_DEMAND = True                # ... and demand a valid certificate (OPT_X_TLS_DEMAND)
AUTH_LDAP_TLS_CACERTFILE = os.environ.get("CALDICOTT_LDAP_CA_FILE", "")
AUTH_LDAP_BIND_USER = _required("CALDICOTT_LDAP_BIND_DN")
AUTH_LDAP_BIND_PASSWORD = _required("CALDICOTT_LDAP_BIND_PASSWORD")
AUTH_LDAP_SEARCH = _required("CALDICOTT_LDAP_SEARCH_BASE")
AUTH_LDAP_SEARCH_FILTER = os.environ.get("CALDICOTT_LDAP_SEARCH_FILTER", "")
AUTH_LDAP_UID_FIELD = os.environ.get("CALDICOTT_LDAP_UID_FIELD", "uid")
AUTH_LDAP_GROUP_FIELD = os.environ.get("CALDICOTT_LDAP_GROUP_FIELD", "memberOf")
AUTH_LDAP_USE_NESTED_GROUPS_FOR_ROLES = _flag("CALDICOTT_LDAP_NESTED_GROUPS")

# ---- directory groups -> roles -----------------------------------------------------------------------------------
_GROUPS = {"CALDICOTT_LDAP_GROUP_APPROVERS": APPROVER_ROLE, "CALDICOTT_LDAP_GROUP_REQUESTERS": REQUESTER_ROLE,
           "CALDICOTT_LDAP_GROUP_VIEWERS": VIEWER_ROLE, "CALDICOTT_LDAP_GROUP_OPERATORS": OPERATOR_ROLE}
AUTH_ROLES_MAPPING: dict[str, list[str]] = {}
for _var, _role in _GROUPS.items():
    for _dn in _dns(_var):
        AUTH_ROLES_MAPPING.setdefault(_dn, []).append(_role)
for _dn in _dns("CALDICOTT_LDAP_GROUP_ADMINS", required=False):  # Airflow administrators: keep this group tiny
    AUTH_ROLES_MAPPING.setdefault(_dn, []).append("Admin")

AUTH_ROLES_SYNC_AT_LOGIN = True            # roles follow the directory at every sign-in (added and removed)
AUTH_USER_REGISTRATION = True              # a directory user gets an Airflow account at first sign-in ...
AUTH_USER_REGISTRATION_ROLE = NO_ACCESS_ROLE   # ... with no access unless a mapped group says otherwise
AUTH_ROLE_PUBLIC = None                    # no anonymous access (CaldicottFabAuthManager refuses to start with it)
