from __future__ import annotations

import pytest

from deploy.bundle import BundleError, build_bundle
from deploy.bundle_store import BundleStoreError, _check_version
from deploy.version import version_problem


@pytest.mark.parametrize("good", ["0.1.0-abc123", "v2", "2026-12-03.1"])
def test_plain_directory_names_are_versions(good: str) -> None:
    assert version_problem(good) is None


@pytest.mark.parametrize("bad", ["", ".hidden", "..", "a/b", "/abs", None, 3, ["v1"]])
def test_anything_else_is_refused_with_the_rule(bad: object) -> None:
    problem = version_problem(bad)
    assert problem is not None and "plain directory name" in problem


@pytest.mark.parametrize("bad", [".x", "a/b"])
def test_builder_and_store_refuse_the_same_versions(bad: str, tmp_path: object) -> None:
    # One rule: a version the builder refuses is one the store refuses, with the same words.
    with pytest.raises(BundleError) as built:
        build_bundle(tmp_path, bad)  # type: ignore[arg-type]
    with pytest.raises(BundleStoreError) as stored:
        _check_version(bad)
    assert str(built.value) == str(stored.value) == version_problem(bad)
