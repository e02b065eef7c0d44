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


def test_stateful_sequences_never_answer_5xx(live_server, data_dir) -> None:
    """Sequences that follow the schema's links (open a session, then info / predict / prefetch / close it with the
    id the server answered), on an image uploaded beforehand: no call answers 5xx."""
    from FastMedSAMLib import RemoteSession
    from FastMedSAMLib.client import protocol as p
    from FastMedSAMLib.io.images import read_image

    remote = RemoteSession(live_server.url)
    remote.set_image(read_image(data_dir / "ct_deeplesion_medsam2/CT_Lesion_000015_01_01_103-115.npz"))
    schema = schemathesis.openapi.from_url(live_server.url + "/openapi.json")
    statuses: dict = {}
    failures: list = []

    class Seeded(schema.as_state_machine()):
        def before_call(self, case) -> None:
            if case.operation.path == p.PATH_SESSIONS and case.method.upper() == "POST" and isinstance(case.body, dict):
                case.body["image"] = remote.digest  # the generated digest would never exist: open on a real image

        def get_call_kwargs(self, case) -> dict:
            return {"base_url": live_server.url, "timeout": 60}

        def validate_response(self, response, case, additional_checks=None, **kwargs) -> None:
            key = (case.operation.path, response.status_code)
            statuses[key] = statuses.get(key, 0) + 1
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:200]}")

    Seeded.run(settings=settings(max_examples=30, stateful_step_count=5, deadline=None, database=None, derandomize=True,
                                 suppress_health_check=list(HealthCheck)))
    opened = sum(n for (path, status), n in statuses.items() if path == p.PATH_SESSIONS and status == 201)
    followed = sum(n for (path, status), n in statuses.items() if path.startswith(p.PATH_SESSIONS + "/") and status < 400)
    print(f"stateful: {sum(statuses.values())} calls, {opened} sessions opened, {followed} linked calls succeeded")
    assert opened and followed, statuses  # the links were really followed on live sessions
    assert not failures, "\n".join(failures[:10])
