"""Fuzz the API from its own OpenAPI schema: whatever a client sends, the answer is never a 5xx."""

import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from search.api import create_app


def test_no_server_errors(planted):
    app = create_app(planted)
    with TestClient(app):  # runs the lifespan: model and index loaded, inference thread up
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) == 31  # 10 search (a Live Photo's movie among them), 6 conversation, 4 tagging,
        # 2 text-reading, 1 duplicates, 3 trash, 2 clusters, 1 XMP sidecars, 2 browsing
        for operation in operations:

            @given(case=operation.as_strategy())
            @settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            def no_5xx(case):
                case.call_and_validate(checks=[not_a_server_error])

            no_5xx()
