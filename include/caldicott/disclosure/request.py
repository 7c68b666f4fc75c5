"""A disclosure request as received: who asks, for what, on what basis, about whom, and how to deliver.

Built from a DAG run's conf (the Params form in the UI, or a REST trigger). :func:`DisclosureRequest.from_conf`
checks it against :mod:`caldicott.policy.disclosure`; its errors name fields, never the values given.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from caldicott.policy.disclosure import Category, LegalBasis, policy_for
from caldicott.transport.ledger import item_id

URGENCY = ("routine", "urgent", "immediate_risk")
CONSENT_STATUS = ("given", "refused", "not_sought", "not_possible", "not_required")
CHANNELS = ("outbox", "sftp", "smime-email")
#: What the approver was shown as the country of a package recorded before requests stated one (read back by
#: caldicott.disclosure.flow for those packages only). A new request must state its country: there is no default.
DEFAULT_COUNTRY = "GB"
_COUNTRY = re.compile(r"[A-Z]{2}")
#: An e-mail address as the To header may carry it: one mailbox, no display name, no spaces or control characters.
_MAILBOX = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                      r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+")


class RequestInvalid(ValueError):
    """The request cannot be processed as given. The message names fields only."""


@dataclass(frozen=True)
class DisclosureRequest:
    request_type: str
    reference: str
    requester_organisation: str
    requester_person: str
    authority_check: str
    purpose: str
    necessity: str
    legal_basis: str
    categories: tuple[str, ...]
    date_from: dt.date
    date_to: dt.date
    urgency: str = "routine"
    consent_status: str = "not_sought"
    local_patient_id: str = ""
    requester_org_code: str = ""
    channel: str = "outbox"
    recipient_address: str = ""
    connection_id: str = ""
    recipient_certificate_pem: str = field(default="", repr=False)
    #: where the requester processes the data (ISO 3166-1 alpha-2): shown to the approver, bound by the approval,
    #: and declared on the released item, whose country the release gateway checks against the adequacy list
    country: str = ""   # unstated: not on any adequacy list, so the release gateway refuses it (fail closed)

    @property
    def disclosure_id(self) -> str:
        """Deterministic: the same requester's same reference is the same request."""
        return item_id("dsc", self.requester_org_code or self.requester_organisation.lower(), self.reference)

    @property
    def recipient(self) -> str:
        """Opaque recipient id for the ledger and the gateway's approval check."""
        org = self.requester_org_code or re.sub(r"[^a-z0-9]+", "-", self.requester_organisation.lower()).strip("-")
        return f"{self.request_type}:{org}"[:100]

    @property
    def certificate_sha256(self) -> str | None:
        """SHA-256 fingerprint of the requester's certificate (DER), or None if it does not parse.

        The register records which certificate a package was encrypted to without storing the certificate.
        """
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes

        try:
            cert = x509.load_pem_x509_certificate(self.recipient_certificate_pem.encode())
        except ValueError:
            return None
        return cert.fingerprint(hashes.SHA256()).hex()

    @property
    def certificate_subject(self) -> str | None:
        """The requester certificate's subject (RFC 4514), shown to the approver beside its fingerprint."""
        from cryptography import x509

        try:
            return x509.load_pem_x509_certificate(self.recipient_certificate_pem.encode()).subject.rfc4514_string()
        except ValueError:
            return None

    def register_details(self) -> dict[str, Any]:
        """Everything the register records about the request (the certificate by fingerprint only)."""
        d = asdict(self)
        d.pop("recipient_certificate_pem")
        d["certificate_sha256"] = self.certificate_sha256
        d["certificate_subject"] = self.certificate_subject
        d["categories"] = list(self.categories)
        d["date_from"], d["date_to"] = self.date_from.isoformat(), self.date_to.isoformat()
        d["recipient"] = self.recipient
        return d

    @classmethod
    def from_conf(cls, conf: dict[str, Any]) -> DisclosureRequest:
        missing = [k for k in ("request_type", "reference", "requester_organisation", "requester_person",
                               "authority_check", "purpose", "necessity", "legal_basis", "categories",
                               "date_from", "date_to") if not conf.get(k)]
        if missing:
            raise RequestInvalid(f"missing fields: {', '.join(missing)}")
        rtype = conf["request_type"]
        try:
            pol = policy_for(rtype)
        except KeyError:
            raise RequestInvalid("unknown request_type") from None
        try:
            basis = LegalBasis(conf["legal_basis"])
        except ValueError:
            raise RequestInvalid("unknown legal_basis") from None
        if basis not in pol.legal_bases:
            raise RequestInvalid(f"legal_basis {basis.value} is not one a {rtype} request can rest on")
        cats = conf["categories"]
        if isinstance(cats, str):
            cats = [c.strip() for c in cats.split(",") if c.strip()]
        unknown = [c for c in cats if c not in {x.value for x in Category}]
        if unknown:
            raise RequestInvalid("unknown categories requested")
        try:
            d_from = dt.date.fromisoformat(str(conf["date_from"])[:10])
            d_to = dt.date.fromisoformat(str(conf["date_to"])[:10])
        except ValueError:
            raise RequestInvalid("date_from / date_to must be YYYY-MM-DD") from None
        if d_to < d_from:
            raise RequestInvalid("date_to is before date_from")
        patient = (conf.get("local_patient_id") or "").strip()
        if pol.needs_patient and not patient:
            raise RequestInvalid("local_patient_id is required for this request type")
        if not pol.needs_patient and patient:
            raise RequestInvalid("a cohort request must not name a patient")
        urgency = conf.get("urgency") or "routine"
        consent = conf.get("consent_status") or "not_sought"
        channel = conf.get("channel") or "outbox"
        if urgency not in URGENCY or consent not in CONSENT_STATUS or channel not in CHANNELS:
            raise RequestInvalid("urgency, consent_status or channel has an unknown value")
        if basis == LegalBasis.CONSENT and consent != "given":
            raise RequestInvalid("legal_basis consent needs consent_status given")
        address = str(conf.get("recipient_address") or "").strip()
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in address):
            raise RequestInvalid("recipient_address contains control characters")
        if channel == "smime-email" and not _MAILBOX.fullmatch(address):
            raise RequestInvalid("channel smime-email needs recipient_address: the requester's secure e-mail address")
        # required, never assumed: the approver sees it and the release gateway checks it against the adequacy list
        country = str(conf.get("country") or "").strip().upper()
        if not _COUNTRY.fullmatch(country):
            raise RequestInvalid("country is required: the ISO 3166-1 alpha-2 code of the country where the "
                                 "requester will process the data (e.g. GB)")
        if not conf.get("recipient_certificate_pem"):
            raise RequestInvalid("recipient_certificate_pem is required: packages leave encrypted only")
        return cls(
            request_type=rtype, reference=str(conf["reference"]).strip(),
            requester_organisation=str(conf["requester_organisation"]).strip(),
            requester_person=str(conf["requester_person"]).strip(),
            authority_check=str(conf["authority_check"]).strip(), purpose=str(conf["purpose"]).strip(),
            necessity=str(conf["necessity"]).strip(), legal_basis=basis.value, categories=tuple(cats),
            date_from=d_from, date_to=d_to, urgency=urgency, consent_status=consent, local_patient_id=patient,
            requester_org_code=str(conf.get("requester_org_code") or "").strip(), channel=channel,
            recipient_address=address,
            connection_id=str(conf.get("connection_id") or "").strip(),
            recipient_certificate_pem=str(conf["recipient_certificate_pem"]), country=country,
        )
