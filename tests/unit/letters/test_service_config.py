"""The sending service's identity has no default and is checked as a whole (issue 14: production defaults fail
closed). ``caldicott.letters.service.service_from_config`` names the field at fault, never its value."""

from __future__ import annotations

import copy
import dataclasses

import pytest
from caldicott.letters.service import Clinician, Service, ServiceConfigError, service_from_config

from devtools.demo_service import DEMO_SERVICE


def _config(**changes) -> dict:
    data = copy.deepcopy(DEMO_SERVICE)
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        target = data
        for p in parents:
            target = target[p]
        if value is None:
            target.pop(key, None)
        else:
            target[key] = value
    return data


def test_the_identity_has_no_defaults():
    required = [f.name for f in dataclasses.fields(Service) if f.default is dataclasses.MISSING]
    assert required == ["name", "address", "phone", "ods_code", "clinician"]
    with pytest.raises(TypeError):
        Service()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Clinician()  # type: ignore[call-arg]


def test_a_complete_configuration_builds_the_service():
    s = service_from_config({**_config(), "care_setting": ["310138008", "Psychology service"]})
    assert s.ods_code == "ZZZ01" and s.clinician.sds_user_id == "999000000001"
    assert s.clinician.display == "Dr Alex Example" and s.care_setting == ("310138008", "Psychology service")
    plain = service_from_config(_config(clinician__prefix=None, clinician__given=None))
    assert plain.clinician.display == "Example" and plain.care_setting is None


@pytest.mark.parametrize(("changes", "names"), [
    ({"name": None}, "name is missing"),
    ({"address": "  "}, "address is missing"),
    ({"ods_code": None}, "ods_code is missing"),
    ({"ods_code": "zz 01"}, "ods_code must be an ODS code"),
    ({"clinician": None}, "clinician is missing"),
    ({"clinician__sds_user_id": None}, "clinician.sds_user_id is missing"),
    ({"clinician__sds_user_id": "12345"}, "clinician.sds_user_id must be"),
    ({"clinician__role": 7}, "clinician.role must be text"),
    ({"odscode": "ZZZ01"}, "unknown field(s) odscode"),
    ({"clinician__sds": "1"}, "unknown field(s) clinician.sds"),
    ({"care_setting": ["310138008"]}, "care_setting must be"),
])
def test_a_missing_misspelt_or_malformed_field_is_named(changes, names):
    with pytest.raises(ServiceConfigError) as refused:
        service_from_config(_config(**changes))
    assert names in str(refused.value)
    assert not any(v in str(refused.value) for v in ("ZZZ01", "zz 01", "12345", "999000000001"))   # no value echoed


@pytest.mark.parametrize("data", [None, [], "ZZZ01"])
def test_not_an_object(data):
    with pytest.raises(ServiceConfigError):
        service_from_config(data)
