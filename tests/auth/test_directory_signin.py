"""Real sign-in with roles (issue 14): people sign in to a real Airflow with their passwords in a real directory
(OpenLDAP over LDAPS), get the roles their directory groups map to, and the REST API and the UI enforce them.

Directory (tests/auth/conftest.py): manager1-3 in disclosure-approvers, requester1 in disclosure-requesters,
viewer1 in viewers, oncall1 in operators, nobody1 in no group, admin in airflow-admins. ``CALDICOTT_APPROVERS``
is ``manager1,manager2,admin``: manager3 is a service manager who is not named; admin is named but is not a
service manager. Both must be refused, which is what ``CaldicottFabAuthManager.is_authorized_hitl_task`` adds.
The tests share one held disclosure, filed by requester1 through the module's ``held`` fixture (so they pass in any
order: ``make test`` shuffles them).
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
from caldicott.crypto.keys import make_identity
from caldicott.db import make_engine, sqlite_url
from caldicott.disclosure import register

from tests.auth.conftest import APPROVERS, GROUPS, PEOPLE
from tests.browser import chromium, sign_in
from tests.e2e.test_disclosure import DAG_ID, TASK, answer, request_conf

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROUTINE = ("records_quality", "gp_letters", "referrer_updates", "monthly_dataset")
EXPECTED_ROLES = {"manager1": {"Disclosure approver"}, "manager3": {"Disclosure approver"},
                  "requester1": {"Disclosure requester"}, "viewer1": {"Caldicott viewer"},
                  "oncall1": {"Caldicott operator"}, "nobody1": {"Public"}, "admin": {"Admin"}}
REFERENCE = "AUTH-FAB-1"


def hitl_path(run_id: str) -> str:
    return f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{TASK}/-1/hitlDetails"


def dag_ids(stack, user: str) -> set[str]:
    status, body = stack.api("GET", "/dags?limit=100", user=user)
    return {d["dag_id"] for d in body.get("dags", [])} if status == 200 else set()


@pytest.fixture(scope="module")
def held(fab_stack, e2e_like) -> dict[str, str]:
    """The disclosure requester1 files, held at its approval step while the tests look at it (filed once)."""
    fab_stack.wait_dag(DAG_ID)
    conf = request_conf(e2e_like, REFERENCE, make_identity("Crown Court").cert_pem)
    return {"run_id": fab_stack.trigger(DAG_ID, dt.datetime.now(dt.UTC), conf, user="requester1"), "conf": conf}


# ---- sign-in -----------------------------------------------------------------------------------------------------
def test_only_a_requester_files_a_disclosure(fab_stack, held):
    for user in ("manager1", "viewer1", "oncall1", "nobody1"):
        status, _ = fab_stack.api("POST", f"/dags/{DAG_ID}/dagRuns",
                                  {"logical_date": dt.datetime.now(dt.UTC).isoformat(), "conf": held["conf"]},
                                  user=user)
        assert status == 403, (user, status)
    status, run = fab_stack.api("GET", f"/dags/{DAG_ID}/dagRuns/{held['run_id']}", user="requester1")
    assert status == 200 and run["triggering_user_name"] == "requester1", run


def test_everyone_signs_in_with_their_directory_password(fab_stack, directory):
    for person in PEOPLE:
        status, body = fab_stack.login(person.uid, person.password)
        assert status == 201 and body.get("access_token"), (person.uid, status, body)
    assert fab_stack.login("manager1", "not-the-password")[0] == 401
    assert fab_stack.login("manager1", directory.password("manager2"))[0] == 401   # someone else's password
    assert fab_stack.login("manager1", "")[0] == 400
    assert fab_stack.login("someone-else", "whatever")[0] == 401                  # not in the directory
    assert fab_stack.login("airflow-bind", directory.bind_password)[0] == 401      # the service account is no person
    assert fab_stack.login("manager1*", directory.password("manager1"))[0] == 401  # no LDAP filter injection


def test_roles_come_from_directory_groups_and_from_configuration(fab_stack):
    admin = fab_stack.token("admin")
    for user, roles in EXPECTED_ROLES.items():
        fab_stack.token(user)   # first sign-in registers the user with the roles its groups map to
        status, body = fab_stack.request("GET", f"/auth/fab/v1/users/{user}", token=admin)
        assert status == 200, (user, body)
        # FAB adds the registration role (Public, empty) to everyone who signs in
        assert {r["name"] for r in body["roles"]} == roles | {"Public"}, (user, body["roles"])
    status, body = fab_stack.request("GET", "/auth/fab/v1/roles/Disclosure%20approver", token=admin)
    assert status == 200, body
    perms = {(p["action"]["name"], p["resource"]["name"]) for p in body["actions"]}
    assert {("can_read", f"DAG:{DAG_ID}"), ("can_edit", "HITL Detail")} <= perms
    assert not {("can_edit", f"DAG:{DAG_ID}"), ("can_create", "DAG Runs"), ("can_create", "Connections"),
                ("can_create", "Variables"), ("can_read", "DAGs")} & perms
    status, body = fab_stack.request("GET", "/auth/fab/v1/roles/Public", token=admin)
    assert status == 200 and body["actions"] == [], body


def test_roles_follow_the_directory_at_each_sign_in(fab_stack, directory):
    """manager2 leaves the approvers group: at the next sign-in the role is gone."""
    admin = fab_stack.token("admin")
    assert fab_stack.login("manager2", directory.password("manager2"))[0] == 201
    directory.remove_from_group("manager2", GROUPS["approvers"])
    assert fab_stack.login("manager2", directory.password("manager2"))[0] == 201
    status, body = fab_stack.request("GET", "/auth/fab/v1/users/manager2", token=admin)
    assert status == 200 and {r["name"] for r in body["roles"]} == {"Public"}, body


# ---- what each role can do ---------------------------------------------------------------------------------------
def test_viewer_sees_routine_dags_but_not_disclosures(fab_stack, held):
    run_id = held["run_id"]
    assert dag_ids(fab_stack, "viewer1") == set(ROUTINE)
    assert fab_stack.api("GET", "/dags/gp_letters", user="viewer1")[0] == 200
    assert fab_stack.api("GET", "/dags/gp_letters/dagRuns", user="viewer1")[0] == 200
    for path in (f"/dags/{DAG_ID}", f"/dags/{DAG_ID}/details", f"/dags/{DAG_ID}/dagRuns",
                 f"/dags/{DAG_ID}/dagRuns/{run_id}", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances",
                 hitl_path(run_id), f"/dagSources/{DAG_ID}"):
        status, _ = fab_stack.api("GET", path, user="viewer1")
        assert status in (403, 404), (path, status)
    status, runs = fab_stack.api("GET", "/dags/~/dagRuns?limit=100", user="viewer1")
    assert status == 200 and all(r["dag_id"] != DAG_ID for r in runs["dag_runs"])
    status, hitl = fab_stack.api("GET", "/dags/~/dagRuns/~/hitlDetails", user="viewer1")
    assert status in (200, 403) and not [h for h in hitl.get("hitl_details", []) if DAG_ID in str(h)]
    # nor can they give themselves a role
    status, _ = fab_stack.request("PATCH", "/auth/fab/v1/users/viewer1", {"roles": [{"name": "Disclosure approver"}]},
                                  token=fab_stack.token("viewer1"))
    assert status == 403


def test_approver_reads_disclosures_but_cannot_trigger_or_configure(fab_stack, held):
    assert dag_ids(fab_stack, "manager1") == {DAG_ID}
    assert fab_stack.api("GET", f"/dags/{DAG_ID}", user="manager1")[0] == 200
    assert fab_stack.api("GET", f"/dags/{DAG_ID}/dagRuns/{held['run_id']}", user="manager1")[0] == 200
    status, _ = fab_stack.api("POST", "/connections", {"connection_id": "exfil", "conn_type": "http",
                                                        "host": "attacker.example"}, user="manager1")
    assert status == 403
    assert fab_stack.api("POST", "/variables", {"key": "CALDICOTT_APPROVERS", "value": "manager3"},
                         user="manager1")[0] == 403
    assert fab_stack.api("PATCH", f"/dags/{DAG_ID}", {"is_paused": True}, user="manager1")[0] == 403
    assert fab_stack.api("POST", f"/dags/{DAG_ID}/clearTaskInstances", {"dry_run": True}, user="manager1")[0] == 403
    assert fab_stack.api("GET", "/dags/gp_letters", user="manager1")[0] == 403


def test_operator_runs_routine_dags_only(fab_stack, held):
    assert dag_ids(fab_stack, "oncall1") == set(ROUTINE)
    status, run = fab_stack.api("POST", "/dags/records_quality/dagRuns",
                                {"logical_date": dt.datetime.now(dt.UTC).isoformat()}, user="oncall1")
    assert status == 200, run
    status, _ = fab_stack.api("POST", "/dags/records_quality/clearTaskInstances",
                              {"dry_run": True, "dag_run_id": run["dag_run_id"]}, user="oncall1")
    assert status == 200
    for method, path in (("GET", f"/dags/{DAG_ID}"), ("GET", hitl_path(held["run_id"])),
                         ("POST", f"/dags/{DAG_ID}/clearTaskInstances")):
        assert fab_stack.api(method, path, {"dry_run": True} if method == "POST" else None,
                             user="oncall1")[0] == 403, path
    assert fab_stack.api("POST", "/variables", {"key": "k", "value": "v"}, user="oncall1")[0] == 403


def test_user_in_no_group_gets_nothing(fab_stack):
    for path in ("/dags", "/dags/gp_letters", f"/dags/{DAG_ID}", "/dags/~/dagRuns", "/connections", "/variables"):
        assert fab_stack.api("GET", path, user="nobody1")[0] == 403, path


# ---- answering the held disclosure -------------------------------------------------------------------------------
def test_only_a_named_approver_with_the_role_answers(fab_stack, e2e_like, held):
    run_id = held["run_id"]
    fab_stack.wait_task_state(DAG_ID, run_id, TASK, "awaiting_input", timeout=240)
    status, detail = fab_stack.api("GET", hitl_path(run_id), user="manager1")
    assert status == 200 and {u["id"] for u in detail["assigned_users"]} == set(APPROVERS.split(","))
    form = {"reasons": "sealed order seen; proportionate", "legal_basis_confirmed": True,
            "consulted": "Caldicott Guardian"}
    for user in ("requester1", "oncall1", "viewer1", "nobody1"):     # no right to answer at all
        status, body = answer(fab_stack, run_id, user, "Approve", **form)
        assert status == 403, (user, status, body)
    for user in ("manager3", "admin"):   # may answer HITL tasks, but not a named approver with the role
        status, body = answer(fab_stack, run_id, user, "Approve", **form)
        assert status == 403 and "not a respondent" in str(body.get("detail")), (user, status, body)
    status, body = answer(fab_stack, run_id, "manager1", "Approve", **form)
    assert status == 200, body
    assert body["responded_by"]["name"] == "manager1"
    assert body["responded_by"]["id"].isdigit()          # FAB's user id: the flow goes by the name
    assert fab_stack.wait_run(DAG_ID, run_id, timeout=240) == "success", fab_stack.task_states(DAG_ID, run_id)
    state = make_engine(sqlite_url(e2e_like.workspace.state_db))
    row = next(r for r in register.requests(state) if r["reference"] == REFERENCE)
    assert row["status"] == "released" and row["decided_by"] == "manager1", row


# ---- the UI ------------------------------------------------------------------------------------------------------
def test_sign_in_page_shows_each_role_its_dags(fab_stack, directory, tmp_path):
    """manager1 signs in on the login page and sees disclosure_request; viewer1 does not (but sees gp_letters).

    Screenshots go to ``$CALDICOTT_SCREENSHOTS`` when set (else the test's temporary folder)."""
    shots = Path(os.environ.get("CALDICOTT_SCREENSHOTS", tmp_path))
    with chromium() as browser:
        for user, sees, never in (("manager1", DAG_ID, "gp_letters"), ("viewer1", "gp_letters", DAG_ID)):
            page = sign_in(browser, fab_stack.base, user, directory.password(user), height=1000)
            page.goto(fab_stack.base + "/dags")
            page.get_by_text(sees, exact=True).first.wait_for()
            page.screenshot(path=str(shots / f"signin_{user}_dags.png"))
            assert page.get_by_text(never, exact=True).count() == 0, (user, never)
            page.context.close()
