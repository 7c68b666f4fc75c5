"""The auth manager's own rules and the deployment's role table, without servers (fast).

``deploy/webserver_config.py`` is loaded as the api-server loads it (a Python file, settings from the
environment), and FAB's real ``is_authorized_dag`` is asked about users holding exactly one configured role:
what each role can and cannot do to disclosure_request and the routine DAGs, as docs/deployment.md says.
"""

from __future__ import annotations

import runpy
from types import SimpleNamespace

import pytest
from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
from caldicott_airflow.auth import APPROVER_ROLE, CaldicottFabAuthManager

from devtools.paths import ROOT

CONFIG = ROOT / "deploy" / "webserver_config.py"
LDAP_ENV = {
    "CALDICOTT_LDAP_URL": "ldaps://dc1.trust.example.nhs.uk:636",
    "CALDICOTT_LDAP_BIND_DN": "cn=svc-airflow,ou=services,dc=trust,dc=example",
    "CALDICOTT_LDAP_BIND_PASSWORD": "not-a-real-password",
    "CALDICOTT_LDAP_SEARCH_BASE": "ou=people,dc=trust,dc=example",
    "CALDICOTT_LDAP_GROUP_APPROVERS": "cn=approvers,ou=groups,dc=trust,dc=example",
    "CALDICOTT_LDAP_GROUP_REQUESTERS": "cn=requesters,ou=groups,dc=trust,dc=example",
    "CALDICOTT_LDAP_GROUP_VIEWERS": "cn=viewers,ou=groups,dc=trust,dc=example;"
                                    " cn=auditors,ou=groups,dc=trust,dc=example",
    "CALDICOTT_LDAP_GROUP_OPERATORS": "cn=operators,ou=groups,dc=trust,dc=example",
}
DISCLOSURE, ROUTINE = "disclosure_request", "gp_letters"


def load_config(monkeypatch, **over: str) -> dict:
    for k in [*LDAP_ENV, "CALDICOTT_LDAP_START_TLS", "CALDICOTT_LDAP_GROUP_ADMINS"]:
        monkeypatch.delenv(k, raising=False)
    for k, v in {**LDAP_ENV, **over}.items():
        if v is not None:
            monkeypatch.setenv(k, v)
    return runpy.run_path(str(CONFIG))


@pytest.fixture(scope="module")
def am() -> CaldicottFabAuthManager:
    return CaldicottFabAuthManager()


@pytest.fixture
def config(monkeypatch) -> dict:
    return load_config(monkeypatch)


def user_with(config: dict, role: str, name: str = "someone") -> SimpleNamespace:
    """A stand-in for FAB's User: the permissions of exactly one configured role (FAB reads ``user.perms``)."""
    return SimpleNamespace(perms=set(config["CALDICOTT_ROLES"][role]), roles=[SimpleNamespace(name=role)],
                           get_name=lambda: name, get_id=lambda: "42")


def can(am, user, method: str, dag_id: str | None, entity: DagAccessEntity | None = None) -> bool:
    return am.is_authorized_dag(method=method, user=user, access_entity=entity,
                                details=DagDetails(id=dag_id) if dag_id else None)


# ---- who may answer a held disclosure ----------------------------------------------------------------------------
def person(name: str, *roles: str, uid: str = "7") -> SimpleNamespace:
    return SimpleNamespace(get_name=lambda: name, get_id=lambda: uid, roles=[SimpleNamespace(name=r) for r in roles])


def test_only_an_assigned_user_with_the_approver_role_may_answer(am):
    assigned = {"manager1", "manager2"}
    assert am.is_authorized_hitl_task(assigned_users=assigned, user=person("manager1", APPROVER_ROLE))
    assert not am.is_authorized_hitl_task(assigned_users=assigned, user=person("manager3", APPROVER_ROLE))
    assert not am.is_authorized_hitl_task(assigned_users=assigned, user=person("manager1", "Admin"))
    assert not am.is_authorized_hitl_task(assigned_users=assigned, user=person("manager1"))
    # FAB's numeric id never counts, even when it happens to equal an assigned entry
    assert not am.is_authorized_hitl_task(assigned_users={"7"}, user=person("viewer1", APPROVER_ROLE, uid="7"))
    assert not am.is_authorized_hitl_task(assigned_users={""}, user=person("", APPROVER_ROLE))


# ---- the role table ----------------------------------------------------------------------------------------------
def test_approver_reads_and_answers_disclosures_only(am, config):
    u = user_with(config, APPROVER_ROLE)
    assert can(am, u, "GET", DISCLOSURE) and can(am, u, "GET", DISCLOSURE, DagAccessEntity.RUN)
    assert can(am, u, "GET", DISCLOSURE, DagAccessEntity.HITL_DETAIL)
    assert can(am, u, "PUT", DISCLOSURE, DagAccessEntity.HITL_DETAIL)       # answer (with can_read on the DAG)
    assert not can(am, u, "POST", DISCLOSURE, DagAccessEntity.RUN)         # trigger
    assert not can(am, u, "PUT", DISCLOSURE)                               # pause / unpause
    assert not can(am, u, "PUT", DISCLOSURE, DagAccessEntity.TASK_INSTANCE)  # clear / mark success
    assert not can(am, u, "PUT", DISCLOSURE, DagAccessEntity.RUN)          # mark the run
    assert not can(am, u, "GET", ROUTINE)
    for method in ("POST", "PUT"):
        assert not am.is_authorized_connection(method=method, user=u)
        assert not am.is_authorized_variable(method=method, user=u)


def test_requester_triggers_but_cannot_answer(am, config):
    u = user_with(config, "Disclosure requester")
    assert can(am, u, "POST", DISCLOSURE, DagAccessEntity.RUN) and can(am, u, "GET", DISCLOSURE, DagAccessEntity.RUN)
    assert not can(am, u, "PUT", DISCLOSURE, DagAccessEntity.HITL_DETAIL)
    assert not can(am, u, "PUT", DISCLOSURE, DagAccessEntity.TASK_INSTANCE)
    assert not can(am, u, "GET", ROUTINE) and not can(am, u, "POST", ROUTINE, DagAccessEntity.RUN)


@pytest.mark.parametrize("role", ["Caldicott viewer", "Caldicott operator"])
def test_viewers_and_operators_never_see_disclosures(am, config, role):
    u = user_with(config, role)
    for entity in (None, DagAccessEntity.RUN, DagAccessEntity.TASK_INSTANCE, DagAccessEntity.HITL_DETAIL,
                   DagAccessEntity.XCOM, DagAccessEntity.TASK_LOGS, DagAccessEntity.CODE):
        for method in ("GET", "POST", "PUT"):
            assert not can(am, u, method, DISCLOSURE, entity), (role, method, entity)
    assert can(am, u, "GET", ROUTINE) and can(am, u, "GET", ROUTINE, DagAccessEntity.TASK_INSTANCE)
    assert can(am, u, "GET", None)   # the DAG list (filtered to the DAGs the role can read)
    operator = role == "Caldicott operator"
    assert can(am, u, "POST", ROUTINE, DagAccessEntity.RUN) is operator          # trigger
    assert can(am, u, "PUT", ROUTINE, DagAccessEntity.TASK_INSTANCE) is operator  # clear
    assert not am.is_authorized_connection(method="POST", user=u)
    assert not am.is_authorized_variable(method="POST", user=u)


def test_no_group_means_no_access(am, config):
    u = user_with(config, "Public")
    assert not u.perms
    assert not can(am, u, "GET", None) and not can(am, u, "GET", ROUTINE) and not can(am, u, "GET", DISCLOSURE)


# ---- the configuration fails closed ------------------------------------------------------------------------------
def test_config_maps_groups_and_registers_users_with_no_access(config):
    assert config["AUTH_ROLES_MAPPING"] == {
        "cn=approvers,ou=groups,dc=trust,dc=example": [APPROVER_ROLE],
        "cn=requesters,ou=groups,dc=trust,dc=example": ["Disclosure requester"],
        "cn=viewers,ou=groups,dc=trust,dc=example": ["Caldicott viewer"],
        "cn=auditors,ou=groups,dc=trust,dc=example": ["Caldicott viewer"],
        "cn=operators,ou=groups,dc=trust,dc=example": ["Caldicott operator"],
    }
    assert config["AUTH_USER_REGISTRATION_ROLE"] == "Public" and config["CALDICOTT_ROLES"]["Public"] == []
    assert config["AUTH_ROLES_SYNC_AT_LOGIN"] and config["AUTH_LDAP_TLS_DEMAND"]
    assert not config["AUTH_LDAP_ALLOW_SELF_SIGNED"] and config["AUTH_ROLE_PUBLIC"] is None
    # DAG-level access only: no role reads or edits every DAG (the menu entry is not access)
    assert not [(role, a) for role, perms in config["CALDICOTT_ROLES"].items() for a, res in perms
                if res == "DAGs" and a != "menu_access"]


@pytest.mark.parametrize("missing", list(LDAP_ENV))
def test_config_refuses_to_load_without_each_setting(monkeypatch, missing):
    with pytest.raises(RuntimeError, match=missing):
        load_config(monkeypatch, **{missing: None})


def test_config_refuses_plain_ldap_but_accepts_start_tls(monkeypatch):
    with pytest.raises(RuntimeError, match="never sent in clear"):
        load_config(monkeypatch, CALDICOTT_LDAP_URL="ldap://dc1.trust.example.nhs.uk")
    cfg = load_config(monkeypatch, CALDICOTT_LDAP_URL="ldap://dc1.trust.example.nhs.uk",
                      CALDICOTT_LDAP_START_TLS="true")
    assert cfg["AUTH_LDAP_USE_TLS"]


def test_admin_group_is_optional(monkeypatch):
    cfg = load_config(monkeypatch, CALDICOTT_LDAP_GROUP_ADMINS="cn=airflow-admins,ou=groups,dc=trust,dc=example")
    assert cfg["AUTH_ROLES_MAPPING"]["cn=airflow-admins,ou=groups,dc=trust,dc=example"] == ["Admin"]


# ---- roles written at start-up, and the start-up checks ----------------------------------------------------------
class FakeSecurityManager:
    """The few FAB security-manager calls sync_roles makes, over plain sets."""

    def __init__(self, roles: dict[str, set[tuple[str, str]]]) -> None:
        self.roles = {n: SimpleNamespace(name=n, permissions=set(p)) for n, p in roles.items()}

    def find_role(self, name):
        return self.roles.get(name)

    def add_role(self, name):
        self.roles[name] = SimpleNamespace(name=name, permissions=set())
        return self.roles[name]

    def create_permission(self, action, resource):
        return (action, resource)

    def add_permission_to_role(self, role, perm):
        role.permissions.add(perm)

    def remove_permission_from_role(self, role, perm):
        role.permissions.discard(perm)


def test_sync_makes_configured_roles_exact_and_leaves_others():
    from caldicott_airflow.auth import sync_roles

    sm = FakeSecurityManager({APPROVER_ROLE: {("can_read", "DAG:x"), ("can_create", "Connections")},
                              "Op": {("can_edit", "DAGs")}})
    sync_roles(sm, {APPROVER_ROLE: [("can_read", "DAG:x"), ("can_edit", "HITL Detail")], "Public": []})
    assert sm.roles[APPROVER_ROLE].permissions == {("can_read", "DAG:x"), ("can_edit", "HITL Detail")}
    assert sm.roles["Public"].permissions == set() and sm.roles["Op"].permissions == {("can_edit", "DAGs")}


def _start(monkeypatch, app_config: dict) -> FakeSecurityManager:
    from airflow.providers.fab.auth_manager.fab_auth_manager import FabAuthManager
    from flask import Flask

    monkeypatch.setattr(FabAuthManager, "init_flask_resources", lambda self: None)   # FAB's own sync: not here
    app = Flask("t")
    app.config.update(app_config)
    am = CaldicottFabAuthManager()
    am.appbuilder = SimpleNamespace(app=app)
    sm = FakeSecurityManager({})
    am.__dict__["security_manager"] = sm
    with app.app_context():
        am.init_flask_resources()
    return sm


def test_start_up_writes_the_roles_from_webserver_config(monkeypatch):
    sm = _start(monkeypatch, {"CALDICOTT_ROLES": {APPROVER_ROLE: [("can_read", "DAG:disclosure_request")]}})
    assert sm.roles[APPROVER_ROLE].permissions == {("can_read", "DAG:disclosure_request")}


def test_start_up_refuses_without_webserver_config(monkeypatch):
    from airflow.exceptions import AirflowConfigException

    with pytest.raises(AirflowConfigException, match="webserver_config"):
        _start(monkeypatch, {})


def test_start_up_refuses_anonymous_access(monkeypatch):
    from airflow.exceptions import AirflowConfigException

    with pytest.raises(AirflowConfigException, match="anonymous"):
        _start(monkeypatch, {"CALDICOTT_ROLES": {"Public": []}, "AUTH_ROLE_PUBLIC": "Public"})
    monkeypatch.setenv("AIRFLOW__FAB__AUTH_ROLE_PUBLIC", "Caldicott viewer")
    with pytest.raises(AirflowConfigException, match="anonymous"):
        _start(monkeypatch, {"CALDICOTT_ROLES": {"Public": []}})
