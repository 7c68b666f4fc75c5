"""Access (issue 8, part 5), the part not already covered elsewhere.

Already covered, not repeated here: key material in the tree (``tests/security/test_no_key_material_in_tree.py``);
one letter against one other practice's key (``tests/unit/letters/test_letters_crypto_fhir.py``); only assigned
approvers can answer a disclosure, over Airflow's REST API (``tests/e2e/test_disclosure.py``: 403 for the admin
and a viewer, 409 for a second answer).

Here: every S/MIME letter the real SMTP peer actually received in a month opens with its addressee's key and
with NO other practice's key, and carries no readable PDF or patient identifier on the wire.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import smtplib
from pathlib import Path

import pytest
from caldicott.crypto import smime
from caldicott.letters import flow
from caldicott.transport.smtp import SmtpSender

from devtools.leakscan import patient_values
from devtools.peers.smtp import SmtpPeer

from .conftest import figure, new_state

OCT = (dt.date(2026, 10, 1), dt.date(2026, 11, 1))


def test_each_delivered_letter_opens_only_with_its_practice_key(synth_source, service, tmp_path):
    _, state = new_state(tmp_path)
    planned = flow.plan(synth_source.engine, state, *OCT, "2026-10")
    batches = [b for b in planned["batches"] if b["channel"] == "smime-email"]
    assert len(batches) >= 2
    with SmtpPeer(tmp_path / "smtp") as smtp:
        client = smtplib.SMTP("127.0.0.1", smtp.port, timeout=30)
        ch = flow.Channels({"smtp": SmtpSender(client, "letters@nhs.example")}, service, "letters@nhs.example")
        for b in batches:
            assert flow.send_batch(synth_source.engine, state, b, ch, *OCT)["sent"] == len(b["letters"])
        client.quit()
        raw = smtp.raw()
    practices = synth_source.result.frames["gp_practice"]
    keys: dict[str, tuple[bytes, bytes]] = {}
    for code in practices["ods_code"]:
        crt, key = synth_source.keys_dir / f"{code}.crt", synth_source.keys_dir / f"{code}.key"
        if crt.exists() and key.exists():
            keys[code] = (crt.read_bytes(), key.read_bytes())
    assert len(keys) >= 3
    identifiers = [v for vals in patient_values(Path(synth_source.url.split("///", 1)[1])).values()
                   for v in vals if v and "@" not in v]   # e-mail addresses of practices are on the envelope
    attempts = refused = 0
    for message in raw:
        to = email.message_from_bytes(message, policy=email.policy.default)["X-Envelope-To"]
        owner = next(c for c in keys if f"practice.{c.lower()}@" in to)
        assert b"%PDF" not in message
        text = message.decode("utf-8", "replace")
        assert not [v for v in identifiers if v in text], "patient data readable on the wire"
        assert smime.open_envelope(message, *keys[owner])
        for code, pair in keys.items():
            if code == owner:
                continue
            attempts += 1
            with pytest.raises(ValueError):
                smime.open_envelope(message, *pair)
            refused += 1
    figure("access: wrong-key decryptions attempted (all refused)", attempts)
    print(f"access: {len(raw)} delivered S/MIME letters; {attempts} decryptions with another practice's key, "
          f"{refused} refused")
    assert attempts == refused and attempts >= len(raw) * 2
