"""A real directory and a real Airflow signing people in against it (issue 14, "real sign-in with roles").

``directory``: Debian's slapd on ``ldaps://127.0.0.1:<port>`` (devtools/ldap_server.py) with synthetic people
in synthetic groups. ``fab_stack``: api-server, scheduler, dag-processor and triggerer on loopback, with
``caldicott_airflow.auth.CaldicottFabAuthManager`` and the deployment's own ``deploy/webserver_config.py``
(LDAPS, certificate verified, search bind, groups -> roles). Both are started once per module and stopped at
the end; the module skips with the reason when python-ldap, slapd or ldap-utils is missing (.ci/run installs
them, so CI runs it).
"""

from __future__ import annotations

import secrets
from pathlib import Path
from types import SimpleNamespace

import pytest

from devtools.airflow_env import free_port
from devtools.bootstrap import Workspace, prepare
from devtools.ldap_server import DirectoryStack, LdapServer, Person, missing
from devtools.paths import ROOT
from devtools.stack import AirflowStack

AUTH_PATIENTS, AUTH_SEED = 80, 3
GROUPS = {"approvers": "disclosure-approvers", "requesters": "disclosure-requesters", "viewers": "viewers",
          "operators": "operators", "admins": "airflow-admins"}
#: manager3 is a service manager not named in CALDICOTT_APPROVERS; admin is named there but is no approver.
PEOPLE = [Person("manager1", (GROUPS["approvers"],)), Person("manager2", (GROUPS["approvers"],)),
          Person("manager3", (GROUPS["approvers"],)), Person("requester1", (GROUPS["requesters"],)),
          Person("viewer1", (GROUPS["viewers"],)), Person("oncall1", (GROUPS["operators"],)),
          Person("nobody1"), Person("admin", (GROUPS["admins"],))]
APPROVERS = "manager1,manager2,admin"


def _skip_reason() -> str | None:
    try:
        import ldap  # noqa: F401
    except ImportError as exc:
        return f"python-ldap is not importable ({exc}): install requirements-ldap.txt (needs libldap2-dev " \
               "libsasl2-dev, gcc and Python headers; .ci/run installs them)"
    return missing()


def directory_env(d: LdapServer) -> dict[str, str]:
    """The deployment's sign-in settings (deploy/webserver_config.py) pointed at the test directory."""
    return {
        "AIRFLOW__CORE__AUTH_MANAGER": "caldicott_airflow.auth.CaldicottFabAuthManager",
        "AIRFLOW__FAB__CONFIG_FILE": str(ROOT / "deploy" / "webserver_config.py"),
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
        "CALDICOTT_LDAP_URL": d.url,
        "CALDICOTT_LDAP_CA_FILE": str(d.ca_file),
        "CALDICOTT_LDAP_BIND_DN": d.bind_dn,
        "CALDICOTT_LDAP_BIND_PASSWORD": d.bind_password,
        "CALDICOTT_LDAP_SEARCH_BASE": d.people_base,
        "CALDICOTT_LDAP_SEARCH_FILTER": "(objectClass=inetOrgPerson)",
        "CALDICOTT_LDAP_GROUP_APPROVERS": d.group_dn(GROUPS["approvers"]),
        "CALDICOTT_LDAP_GROUP_REQUESTERS": d.group_dn(GROUPS["requesters"]),
        "CALDICOTT_LDAP_GROUP_VIEWERS": d.group_dn(GROUPS["viewers"]),
        "CALDICOTT_LDAP_GROUP_OPERATORS": d.group_dn(GROUPS["operators"]),
        "CALDICOTT_LDAP_GROUP_ADMINS": d.group_dn(GROUPS["admins"]),
        "CALDICOTT_APPROVERS": APPROVERS,
    }


@pytest.fixture(scope="module")
def directory(tmp_path_factory) -> LdapServer:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    with LdapServer(tmp_path_factory.mktemp("ldap"), PEOPLE, list(GROUPS.values())) as d:
        yield d


@pytest.fixture(scope="module")
def fab_stack(directory, tmp_path_factory) -> DirectoryStack:
    root = tmp_path_factory.mktemp("fab")
    ws = Workspace(root / "workspace")
    env = prepare(ws, root / "airflow", patients=AUTH_PATIENTS, seed_value=AUTH_SEED, api_port=free_port(),
                  extra=directory_env(directory))
    stack = DirectoryStack(env, directory)
    stack.workspace = ws
    with stack:
        yield stack


@pytest.fixture(scope="module")
def e2e_like(fab_stack) -> SimpleNamespace:
    """What tests/e2e/test_disclosure.py's helpers expect of their ``e2e`` fixture."""
    return SimpleNamespace(stack=fab_stack, workspace=fab_stack.workspace)


def home(stack: AirflowStack) -> Path:
    return Path(stack.env["AIRFLOW_HOME"])
