"""No input makes the API answer 5xx: schemathesis generates requests from the app's own OpenAPI
schema (as an admin, so routes are reached past the role checks) and any server error fails.

Bounded so it fits in the suite: a few examples per operation, no shrinking, a tiny model whose
answers are capped at a handful of tokens."""

from __future__ import annotations

import os
import time

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from hypothesis.errors import Unsatisfiable

from tuneloop.core.accounts import service as accounts
from tuneloop.core.db import session_scope

# Per operation and mode (valid, invalid): ~40 s of CPU for the whole API. A deeper run, outside the
# suite: TUNELOOP_FUZZ_EXAMPLES=200 pytest tests/test_api_fuzz.py
EXAMPLES = int(os.environ.get("TUNELOOP_FUZZ_EXAMPLES", "6"))
BUDGET_SECONDS = 180 if EXAMPLES <= 6 else float("inf")  # wall clock, generous for a loaded machine


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory, tiny_model_dir):
    from tuneloop.app import create_app
    from tuneloop.core.settings import Settings

    root = tmp_path_factory.mktemp("fuzz")
    app = create_app(Settings(data_dir=root / "data", database_url=f"sqlite:///{root / 'tuneloop.db'}",
                              base_model=str(tiny_model_dir), dtype="float32", admin_password="admin-password",
                              max_tokens=4, rate_limit_per_minute=0, memory_enabled=False),
                     load_model=False, mount_ui=False)
    app.state.runtime.start(background=False)
    with session_scope(app.state.db) as session:
        app.state.fuzz_key = accounts.create_api_key(session, accounts.get_account(session, "admin"))[1]
    yield app
    app.state.runtime.stop()
    app.state.db.dispose()


@pytest.fixture(scope="module")
def api_schema(fuzz_app):
    return schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)


def test_no_input_is_a_server_error(api_schema, fuzz_app):
    """Every operation, a few valid and a few invalid generated cases each, within a time budget."""
    from hypothesis import given

    headers = {"Authorization": f"Bearer {fuzz_app.state.fuzz_key}"}
    failures: list[str] = []
    started = time.monotonic()
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) > 40  # precondition: the whole API is in the schema

    cases = [(operation, mode) for operation in operations
             for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)]
    for operation, mode in cases:
        @given(case=operation.as_strategy(mode))
        @settings(max_examples=EXAMPLES, deadline=None, phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck), database=None)
        def run(case):
            if isinstance(case.body, dict) and "max_tokens" in case.body:
                case.body["max_tokens"] = 4  # the answer's length is not under test, only the time it takes
            response = case.call(headers=headers)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} -> {response.status_code}: "
                                f"{response.text[:300]}\n  {case.as_curl_command(headers=headers)}")

        try:
            run()
        except Unsatisfiable:  # an operation without parameters or body has no invalid form
            assert mode is schemathesis.GenerationMode.NEGATIVE
    elapsed = time.monotonic() - started
    assert failures == [], "\n".join(failures)
    assert elapsed < BUDGET_SECONDS, f"the fuzz run took {elapsed:.0f}s; lower EXAMPLES"
