from __future__ import annotations

import hashlib

import numpy as np
import pytest
from scipy import stats

from core import HashingError, bucket, seed64


def test_bucket_is_sha256_top_53_bits_over_2_pow_53() -> None:
    digest = hashlib.sha256(b"salt\x00unit-1").digest()
    expected = (int.from_bytes(digest[:8], "big") >> 11) / 2**53
    assert bucket("unit-1", "salt") == expected
    assert seed64("unit-1", "salt") == int.from_bytes(digest[:8], "big")


def test_bucket_is_stable_and_in_unit_interval() -> None:
    values = [bucket(f"u{i}", "exp") for i in range(2000)]
    assert values == [bucket(f"u{i}", "exp") for i in range(2000)]
    assert all(0.0 <= v < 1.0 for v in values)


def test_bucket_is_uniform() -> None:
    counts, _ = np.histogram([bucket(f"user-{i}", "s") for i in range(50_000)], bins=50)
    assert stats.chisquare(counts).pvalue > 1e-4


def test_salts_separate_units_independently() -> None:
    a = [bucket(f"u{i}", "exp-a") for i in range(20_000)]
    b = [bucket(f"u{i}", "exp-b") for i in range(20_000)]
    assert abs(stats.pearsonr(a, b).statistic) < 0.03


def test_separator_keeps_salt_and_unit_apart() -> None:
    assert bucket("c", "ab") != bucket("bc", "a")


@pytest.mark.parametrize(
    ("unit", "salt", "version", "message"),
    [
        ("u", "s", 2, "hash version 2 is not supported"),
        (12, "s", 1, "unit and salt must be str"),
        ("u\x00", "s", 1, "must not contain NUL"),
    ],
)
def test_bad_inputs_raise_hashing_error(unit: object, salt: str, version: int, message: str) -> None:
    with pytest.raises(HashingError, match=message):
        bucket(unit, salt, version)  # type: ignore[arg-type]
    assert issubclass(HashingError, ValueError)
