"""Who sends the letters: the service's and its named clinician's identity, from the deployment's configuration.

Why a module of its own, with no defaults: this identity is printed on every letter and carried in every GP
Connect bundle (sender Organization, ODS code, SDS user id of the author). A built-in placeholder would let a
misconfigured deployment send real letters under an invented name, so every field a letter or a bundle needs is
required, and :func:`service_from_config` refuses a configuration with a missing, misspelt or malformed field
(naming the field, never echoing the value). Where the configuration lives is the caller's business (Airflow:
``caldicott_airflow.service``; the demo and tests: ``devtools/demo_service.py``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class Clinician:
    """The named clinician responsible for the service's letters: signs each letter and is the Send Document
    author (GPCM-SD-032..034: SDS user id, official name, telephone). Configuration, not patient data."""

    family: str
    role: str
    sds_user_id: str
    phone: str
    given: str = ""
    prefix: str = ""

    @property
    def display(self) -> str:
        return " ".join(p for p in (self.prefix, self.given, self.family) if p)


@dataclass(frozen=True)
class Service:
    """The sending service as it signs its letters (configuration, not patient data).

    ``care_setting``: optional SNOMED CT (code, display) from the UK Core care setting type value set, sent in
    the Send Document Composition when the service knows its own."""

    name: str
    address: str
    phone: str
    ods_code: str
    clinician: Clinician
    care_setting: tuple[str, str] | None = None


class ServiceConfigError(ValueError):
    """The service's configuration is missing or malformed; the message names the field (never its value)."""


ODS_CODE = re.compile(r"[A-Z0-9]{3,10}")
SDS_USER_ID = re.compile(r"\d{12}")
_SERVICE_KEYS = {f.name for f in fields(Service)}
_CLINICIAN_KEYS = {f.name for f in fields(Clinician)}
_OPTIONAL = {"care_setting", "given", "prefix"}


def _text(data: Mapping[str, Any], key: str, where: str) -> str:
    value = data.get(key)
    if value is None or not str(value).strip():
        raise ServiceConfigError(f"{where}{key} is missing")
    if not isinstance(value, str):
        raise ServiceConfigError(f"{where}{key} must be text")
    return value.strip()


def _keys(data: Any, allowed: set[str], where: str) -> Mapping[str, Any]:
    what = where.rstrip(".") or "the service configuration"
    if data is None:
        raise ServiceConfigError(f"{what} is missing")
    if not isinstance(data, Mapping):
        raise ServiceConfigError(f"{what} must be a JSON object")
    unknown = sorted(set(data) - allowed)
    if unknown:   # a misspelt key would otherwise leave its field "missing" with a confusing message
        raise ServiceConfigError(f"unknown field(s) {', '.join(where + k for k in unknown)}; "
                                 f"expected {', '.join(where + k for k in sorted(allowed))}")
    return data


def service_from_config(data: Any) -> Service:
    """A :class:`Service` from a JSON-like mapping::

        {"name": ..., "address": ..., "phone": ..., "ods_code": "X26",
         "clinician": {"family": ..., "role": ..., "sds_user_id": "<12 digits>", "phone": ...,
                       "given": ..., "prefix": ...},            # given and prefix optional
         "care_setting": ["<SNOMED CT code>", "<display>"]}     # optional

    Raises :class:`ServiceConfigError` naming the first field that is missing, unknown or malformed."""
    data = _keys(data, _SERVICE_KEYS, "")
    name, address, phone = (_text(data, k, "") for k in ("name", "address", "phone"))
    ods = _text(data, "ods_code", "")
    if not ODS_CODE.fullmatch(ods):
        raise ServiceConfigError("ods_code must be an ODS code (3 to 10 capital letters and digits)")
    c = _keys(data.get("clinician"), _CLINICIAN_KEYS, "clinician.")
    clinician = Clinician(**{k: _text(c, k, "clinician.") for k in sorted(_CLINICIAN_KEYS - _OPTIONAL)},
                          **{k: str(c.get(k) or "").strip() for k in sorted(_CLINICIAN_KEYS & _OPTIONAL)})
    if not SDS_USER_ID.fullmatch(clinician.sds_user_id):
        raise ServiceConfigError("clinician.sds_user_id must be the clinician's 12-digit SDS user id")
    care = data.get("care_setting")
    if care is not None and (not isinstance(care, list | tuple) or len(care) != 2
                             or not all(isinstance(x, str) and x.strip() for x in care)):
        raise ServiceConfigError("care_setting must be [SNOMED CT code, display]")
    return Service(name=name, address=address, phone=phone, ods_code=ods, clinician=clinician,
                   care_setting=(care[0].strip(), care[1].strip()) if care is not None else None)

__all__ = ["Clinician", "Service", "ServiceConfigError", "service_from_config"]
