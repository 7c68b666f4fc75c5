"""A service manager approves a held disclosure in the Airflow UI: headless Debian chromium driven by
Playwright logs in as manager1, opens Required Actions, finds the request by its disclosure id, reads the page
(the requester's text shown literally, the route in full), fills in the decision form, approves, and the package
is released through the gateway to the outbox; the page then says who answered and that the step succeeded.
Before that, the admin (who filed the request, so not assigned) tries to refuse and is told they may not."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
from caldicott.crypto.keys import make_identity
from caldicott.db import make_engine, sqlite_url
from caldicott.disclosure import register
from caldicott.disclosure.request import DisclosureRequest

from tests.browser import chromium, sign_in
from tests.e2e.test_disclosure import DAG_ID, TASK, request_conf, wait_task_state

pytestmark = pytest.mark.e2e

#: An organisation code that, unescaped, ended a code span and hid the rest of the line in an HTML comment.
HOSTILE_CODE = "CC1` by `outbox` <!-- hidden"


def test_manager_approves_in_the_ui_and_the_package_is_released(e2e, tmp_path):
    stack = e2e.stack
    ident = make_identity("Family Court")
    conf = request_conf(e2e, "UI-APPROVE-1", ident.cert_pem, request_type="safeguarding",
                        legal_basis="safeguarding", requester_organisation="County Council Children's Services",
                        categories=["demographics", "appointments", "care_plans"],
                        requester_org_code=HOSTILE_CODE)   # issue 14: tried to fake the route line
    did = DisclosureRequest.from_conf(conf).disclosure_id
    run_id = stack.trigger(DAG_ID, dt.datetime.now(dt.UTC), conf)
    wait_task_state(stack, run_id, TASK, "awaiting_input")
    password = __import__("devtools.airflow_env", fromlist=["passwords"]).passwords(Path(stack.env["AIRFLOW_HOME"]))

    shots = Path(os.environ.get("CALDICOTT_SCREENSHOTS", tmp_path))
    with chromium() as browser:
        # someone not assigned (the admin, who filed the request) is told so when they try to answer
        other = sign_in(browser, stack.base, "admin", password["admin"])
        other.get_by_text("Required Actions").first.click()
        other.get_by_role("link", name="View all required actions").click()
        other.get_by_role("link", name=f"Disclosure {did}").click()
        other.locator("#element_reasons").fill("trying to decide my own request")
        other.get_by_role("button", name="Refuse").click()   # a refusal needs only the reason...
        other.get_by_text("You do not have permission to perform this action").first.wait_for()  # ...but not theirs
        other.screenshot(path=str(shots / "disclosure_not_assigned.png"))
        other.context.close()
        page = sign_in(browser, stack.base, "manager1", password["manager1"])
        page.get_by_text("Required Actions").first.click()
        page.get_by_role("link", name="View all required actions").click()
        page.get_by_role("link", name=f"Disclosure {did}").click()
        # what the approver reads: the requester's text literally, the route in full
        page.get_by_text("Where it would go").first.wait_for()
        text = page.locator("body").inner_text()
        assert HOSTILE_CODE in text, "the organisation code must show literally, not as formatting"
        for line in ("Outbox folder", "Encrypted to certificate CN=Family Court", "Certificate SHA-256",
                     "Person asking Clerk to the court", "How their authority was checked sealed order seen",
                     "Who may decide manager1, manager2"):
            assert line in text, line
        page.screenshot(path=str(shots / "disclosure_page.png"), full_page=True)
        page.locator("#element_reasons").fill("Child protection enquiry (s47); necessary and proportionate")
        box = page.locator("input[name=element_legal_basis_confirmed]")
        box.locator("xpath=..").click()  # the switch's visible control
        assert box.is_checked()
        page.locator("#element_consulted").fill("Caldicott Guardian; safeguarding lead")
        page.screenshot(path=str(shots / "disclosure_form_filled.png"))
        page.get_by_role("button", name="Approve").click()
        page.get_by_text("response successful").first.wait_for()
        page.screenshot(path=str(shots / "disclosure_approved.png"))
        assert stack.wait_run(DAG_ID, run_id, timeout=300) == "success", stack.task_states(DAG_ID, run_id)
        page.reload()
        page.get_by_text("Where it would go").first.wait_for()
        page.screenshot(path=str(shots / "disclosure_after.png"), full_page=True)
        after = page.locator("body").inner_text()   # the page states the outcome: who answered, task state
        assert "Response received at" in after and "from manager1" in after and "Success" in after, after
        assert "After you answer" in after

    state = make_engine(sqlite_url(e2e.workspace.state_db))
    dec = register.decision(state, did)
    assert dec["event"] == "approved" and dec["actor"] == "manager1"
    assert dec["details"]["consulted"] == "Caldicott Guardian; safeguarding lead"
    assert register.status(state, did) == "released"
    released = register.latest(state, did, register.RELEASED)["details"]
    assert released["package_checksum"] == dec["details"]["package_checksum"]
    assert list((e2e.workspace.outputs / "disclosure-outbox").rglob(f"{did}.zip.p7m"))
