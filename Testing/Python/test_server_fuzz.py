"""schemathesis against the live server's own OpenAPI schema: every operation, bounded examples, zero 5xx."""
from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402  (hypothesis comes with schemathesis)

EXAMPLES = 25


def test_no_operation_answers_5xx(live_server) -> None:
    schema = schemathesis.openapi.from_url(live_server.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    failures, statuses = [], {}
    for operation in operations:
        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def run(case) -> None:
            response = case.call(base_url=live_server.url, timeout=60)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:200]}")

        run()
    print(f"schemathesis: {sum(statuses.values())} calls over {len(operations)} operations, statuses {sorted(statuses.items())}")
    assert sum(statuses.values()) >= 5 * len(operations)
    assert not failures, "\n".join(failures[:10])
