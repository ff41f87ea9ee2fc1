from __future__ import annotations

import os

import pytest
from hypothesis import settings

# CI must not flake: derandomized examples there, fresh ones on developers'
# machines. PERCH_FUZZ_EXAMPLES=5000 fuzzes harder.
_examples = int(os.environ.get("PERCH_FUZZ_EXAMPLES", "100"))
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True, max_examples=_examples)
settings.register_profile("dev", deadline=None, print_blob=True, max_examples=_examples)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test on the PostgreSQL server is marked `postgres`, so `make test-fast` can leave it out.

    The store fixtures are parametrized over both databases; marking here keeps each module free of
    per-test bookkeeping, and a new PostgreSQL test cannot forget its mark.
    """
    for item in items:
        callspec = getattr(item, "callspec", None)
        on_postgres = "pg_url" in getattr(item, "fixturenames", ()) or (
            callspec is not None and "postgresql" in callspec.params.values()
        )
        if on_postgres:
            item.add_marker(pytest.mark.postgres)
