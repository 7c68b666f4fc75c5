"""The disclosure approval page shows the country the package would go to, Markdown-escaped like every value."""

from __future__ import annotations

from caldicott.disclosure.approval import approval_text

SUMMARY = {"disclosure_id": "D-1", "request_type": "court_order", "categories": [], "record_counts": {},
           "withheld": [], "legal_basis": "court_order", "date_from": "2026-01-01", "date_to": "2026-02-01",
           "package_checksum": "a" * 64, "channel": "outbox"}


def _body(**route) -> str:
    _, body = approval_text({}, {**SUMMARY, **route}, 60, approvers=["manager1"], endpoint={"folder": "/out"})
    return body


def test_the_country_is_shown_with_the_documented_default():
    assert "**Country** GB \\(not stated\\: the documented default\\)" in _body()
    assert "**Country** IE" in _body(country="IE")


def test_the_country_is_escaped():
    body = _body(country="GB`<!--")
    assert "**Country** GB\\`\\<\\!\\-\\-" in body
