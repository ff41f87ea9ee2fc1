from __future__ import annotations

import pytest

from core import Snapshot
from tests.factories import build_snapshot


@pytest.fixture
def snapshot() -> Snapshot:
    return build_snapshot()
