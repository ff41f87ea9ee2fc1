"""Gamma and Beta variates built on ``random()`` alone.

The standard library's ``betavariate``/``gammavariate`` are not covered by
Python's reproducibility guarantee (only ``random()`` with a given seed is),
so a Thompson draw made with them could differ between the CPython at the
origin and the Pyodide at the edge.  These samplers use only ``random()``,
IEEE arithmetic, ``sqrt`` (correctly rounded everywhere) and ``log``/``pow``
(the same ARM optimized-routines code in glibc and in emscripten's musl), so
the same uniform stream gives the same variates on both.

Algorithms: Marsaglia & Tsang (2000) for Gamma(a >= 1), with the
``U**(1/a)`` boost for a < 1; normals from Marsaglia's polar method, whose
second normal is kept for the next call; Beta(a, b) = X / (X + Y).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from math import log, sqrt

__all__ = ["beta_variate", "beta_variates", "gamma_variate"]

Uniform = Callable[[], float]


def _normal_pair(random: Uniform) -> tuple[float, float]:
    while True:
        u = 2.0 * random() - 1.0
        v = 2.0 * random() - 1.0
        s = u * u + v * v
        if 0.0 < s < 1.0:
            f = sqrt(-2.0 * log(s) / s)
            return u * f, v * f


def _gamma(random: Uniform, a: float, spare: float | None) -> tuple[float, float | None]:
    """One Gamma(a, 1) variate and the unused normal left over (if any)."""
    boost = 1.0
    if a < 1.0:
        # Gamma(a) = Gamma(a + 1) * U**(1/a); 1 - random() lies in (0, 1].
        boost = (1.0 - random()) ** (1.0 / a)
        a += 1.0
    d = a - 1.0 / 3.0
    c = 1.0 / sqrt(9.0 * d)
    while True:
        if spare is None:
            x, spare = _normal_pair(random)
        else:
            x, spare = spare, None
        v = 1.0 + c * x
        if v <= 0.0:
            continue
        v = v * v * v
        u = 1.0 - random()
        x2 = x * x
        # The squeeze accepts ~98% of draws without a log.
        if u < 1.0 - 0.0331 * x2 * x2 or log(u) < 0.5 * x2 + d * (1.0 - v + log(v)):
            return d * v * boost, spare


def gamma_variate(random: Uniform, a: float) -> float:
    """One draw from Gamma(shape=a, scale=1); ``a`` must be > 0."""
    return _gamma(random, a, None)[0]


def _beta(random: Uniform, a: float, b: float, spare: float | None) -> tuple[float, float | None]:
    x, spare = _gamma(random, a, spare)
    y, spare = _gamma(random, b, spare)
    total = x + y
    if total > 0.0:
        return x / total, spare
    # Both gammas underflowed (shapes far below 1): Beta's mass then sits at
    # the ends, near 1 with probability a / (a + b).
    return (1.0 if random() < a / (a + b) else 0.0), spare


def beta_variate(random: Uniform, a: float, b: float) -> float:
    """One draw from Beta(a, b); ``a`` and ``b`` must be > 0."""
    return _beta(random, a, b, None)[0]


def beta_variates(random: Uniform, alphas: Sequence[float], betas: Sequence[float]) -> list[float]:
    """One Beta(alphas[i], betas[i]) draw per i, in order, from one stream."""
    out: list[float] = []
    spare: float | None = None
    for a, b in zip(alphas, betas, strict=True):
        draw, spare = _beta(random, a, b, spare)
        out.append(draw)
    return out
