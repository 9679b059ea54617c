"""Fuzz the API from its own OpenAPI schema (schemathesis): bad input never gives a 500.

The app is the real one around a trained demo service, called in-process over ASGI (the
schemathesis fixture loader does not run on this pytest; the HTTP path itself is covered by
tests/test_api.py).
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from controller.api import create_app
from tests.support.demo import frozen_demo

pytestmark = pytest.mark.integration


schema = schemathesis.openapi.from_asgi("/openapi.json",
                                        create_app(frozen_demo(), token="fuzz-token"))


@schema.parametrize()
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
def test_api_never_answers_500(case: schemathesis.Case) -> None:
    response = case.call()
    case.validate_response(response, checks=[not_a_server_error])
