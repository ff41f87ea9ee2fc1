"""The contextual model an edge decides from: Gaussian weight posteriors per arm.

The control plane fits, per arm, a Bayesian logistic regression (Laplace
approximation) over one-hot encoded context features and ships the posterior
mean ``mu`` and covariance ``Sigma`` of the weights.  For a visitor whose
encoded vector is ``x``, arm ``a``'s score ``x . w_a`` is then exactly normal,
``N(x . mu_a, x' Sigma_a x)``: drawing one normal per arm and taking the
argmax is exact Thompson sampling for that context.  With ``k`` active
columns that costs O(k^2) multiply-adds per arm and no matrix work.

Encoding, in column order:

* column 0, the intercept, always 1;
* per categorical block (one feature, or an interaction of several): one
  column per learnt value, then ``other`` (a value too rare to have its own),
  then ``unknown`` (the feature is missing, see :mod:`core.features`);
* per numeric block: one column holding ``(value - mean) / scale``, clipped to
  +/- ``NUMERIC_CLIP``, and 0 (the mean) when missing or not a number.

``cov`` holds each arm's upper triangle, row-major: entry (i, j), i <= j, of
arm ``a`` is at ``a * T + i * D - i * (i - 1) // 2 + (j - i)`` where
``T = D * (D + 1) // 2``.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from math import isfinite, log, sqrt
from operator import itemgetter

from core.errors import SnapshotError
from core.features import OTHER, UNKNOWN
from core.text import is_text

__all__ = [
    "MAX_COLUMNS",
    "MAX_MODEL_FLOATS",
    "NUMERIC_CLIP",
    "Block",
    "ContextualModel",
    "normal_variates",
]

MAX_BLOCKS = 64
MAX_VALUES = 10_000  # per block
MAX_COLUMNS = 4_000
# mu and the packed covariances of all arms, as float32: stays well inside a 25 MiB KV value.
MAX_MODEL_FLOATS = 6_000_000
NUMERIC_CLIP = 10.0
KINDS = ("categorical", "numeric")

Uniform = Callable[[], float]
_LITTLE = sys.byteorder == "little"


def normal_variates(random: Uniform, count: int) -> list[float]:
    """``count`` standard normals from ``random()`` alone (Marsaglia's polar method, pairs).

    Like :mod:`core.sampling`, only ``random()``, ``sqrt`` and ``log`` are used, so
    CPython at the origin and Pyodide at the edge draw the same values.
    """
    out: list[float] = []
    while len(out) < count:
        u = 2.0 * random() - 1.0
        v = 2.0 * random() - 1.0
        s = u * u + v * v
        if 0.0 < s < 1.0:
            f = sqrt(-2.0 * log(s) / s)
            out.append(u * f)
            out.append(v * f)
    del out[count:]
    return out


@dataclass(frozen=True, slots=True)
class Block:
    """A group of columns read from the context features ``inputs``.

    Categorical: ``values`` lists the learnt value tuples (one string per input),
    each its own column, followed by the ``other`` and ``unknown`` columns.
    Numeric: one input, one column, standardised with ``mean`` and ``scale``.
    """

    kind: str
    inputs: tuple[str, ...]
    values: tuple[tuple[str, ...], ...] = ()
    mean: float = 0.0
    scale: float = 1.0
    _lookup: dict[tuple[str, ...], int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise SnapshotError(f"block kind {self.kind!r}, must be one of {KINDS}")
        inputs = tuple(self.inputs) if isinstance(self.inputs, (list, tuple)) else ()
        if not 1 <= len(inputs) <= 4 or not all(
            isinstance(n, str) and is_text(n) and 0 < len(n) <= 64 for n in inputs
        ):
            raise SnapshotError(f"block inputs {self.inputs!r}: 1-4 feature names of 1-64 characters")
        if self.kind == "numeric" and len(inputs) != 1:
            raise SnapshotError(f"numeric block {list(inputs)}: reads exactly one feature")
        if not isinstance(self.values, (list, tuple)) or len(self.values) > MAX_VALUES:
            raise SnapshotError(f"block {list(inputs)}: at most {MAX_VALUES} values")
        values = [tuple(item) if isinstance(item, (list, tuple)) else item for item in self.values]
        # Checked all at once, with C loops, and item by item only to name the bad one: a
        # snapshot carries hundreds of values and the edge decodes it on a cold isolate.
        flat = [v for item in values if type(item) is tuple for v in item]
        if (
            not all(type(item) is tuple and len(item) == len(inputs) for item in values)
            or not all(type(v) is str for v in flat)
            or max(map(len, flat), default=0) > 128
            or not is_text("".join(flat))
        ):
            bad = next(
                item
                for item in self.values
                if not isinstance(item, (list, tuple))
                or len(item) != len(inputs)
                or not all(isinstance(v, str) and is_text(v) and len(v) <= 128 for v in item)
            )
            raise SnapshotError(
                f"block {list(inputs)}: value {bad!r} must be {len(inputs)} strings of at most 128 characters"
            )
        if self.kind == "numeric" and values:
            raise SnapshotError(f"numeric block {list(inputs)}: has no values")
        lookup = {v: i for i, v in enumerate(values)}
        if len(lookup) != len(values):
            raise SnapshotError(f"block {list(inputs)}: values must be unique")
        for name in ("mean", "scale"):
            number = getattr(self, name)
            if isinstance(number, bool) or not isinstance(number, (int, float)) or not isfinite(number):
                raise SnapshotError(f"block {list(inputs)}: {name}={number!r}, must be a finite number")
        if not self.scale > 0.0:
            raise SnapshotError(f"block {list(inputs)}: scale={self.scale!r}, must be > 0")
        object.__setattr__(self, "inputs", inputs)
        object.__setattr__(self, "values", tuple(values))
        object.__setattr__(self, "_lookup", lookup)

    @property
    def name(self) -> str:
        return "*".join(self.inputs)

    @property
    def width(self) -> int:
        return 1 if self.kind == "numeric" else len(self.values) + 2

    def column(self, context: Mapping[str, str]) -> tuple[int, float]:
        """(offset within the block, value) for a context completed with ``unknown``s."""
        if self.kind == "numeric":
            raw = context.get(self.inputs[0], UNKNOWN)
            try:
                number = float(raw)
            except (TypeError, ValueError):
                return 0, 0.0
            if not isfinite(number):
                return 0, 0.0
            z = (number - self.mean) / self.scale
            return 0, min(max(z, -NUMERIC_CLIP), NUMERIC_CLIP)
        key = tuple([context.get(n, UNKNOWN) for n in self.inputs])
        index = self._lookup.get(key)
        if index is not None:
            return index, 1.0
        if UNKNOWN in key:
            return len(self.values) + 1, 1.0
        return len(self.values), 1.0

    def label(self, offset: int) -> str:
        """``device=mobile`` (``device=mobile, source=social`` for an interaction, and
        ``device*source=other`` for a shared column) for a column."""
        if self.kind == "numeric":
            return self.inputs[0]
        if offset < len(self.values):
            return ", ".join(f"{n}={v}" for n, v in zip(self.inputs, self.values[offset], strict=True))
        return f"{self.name}={OTHER if offset == len(self.values) else UNKNOWN}"


def _table(name: str, values: object, size: int) -> array[float]:
    try:
        if isinstance(values, array) and values.typecode == "f":
            table = array("f", values.tobytes())
        else:
            table = array("f", values)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError) as exc:
        raise SnapshotError(f"model {name}: must be a sequence of floats ({exc})") from None
    if len(table) != size:
        raise SnapshotError(f"model {name}: {len(table)} values, must be {size}")
    if not _all_finite(table):
        raise SnapshotError(f"model {name}: every value must be finite")
    return table


@lru_cache(maxsize=8)
def _diagonal(arms: int, dim: int) -> Callable[[Sequence[float]], tuple[float, ...]]:
    """A getter of every arm's variances from the packed upper triangles (kept per shape)."""
    tri = dim * (dim + 1) // 2
    # -1, the last arm's last variance again, so that even one index gives a tuple.
    return itemgetter(*(a * tri + i * dim - i * (i - 1) // 2 for a in range(arms) for i in range(dim)), -1)


def _all_finite(table: array[float]) -> bool:
    """No NaN or infinity among float32 values, without a Python-level pass in the usual case.

    A float32 is NaN or infinite only if its exponent bits are all ones, so the byte holding
    the sign and the top 7 of them is 0x7F or 0xFF; finite values with such a byte are beyond
    2**127, which no posterior holds. Slicing those bytes out and searching them runs in C: it
    cut the decoding of a 97-column, 10-arm model by about half (a sum() over 47,530 values did
    the same check before).
    """
    raw = table.tobytes()
    top = raw[3::4] if _LITTLE else raw[0::4]
    if b"\x7f" not in top and b"\xff" not in top:
        return True
    return all(isfinite(v) for v in table)


@dataclass(frozen=True, slots=True)
class ContextualModel:
    """Per-arm Gaussian posteriors over the weights of the encoded context."""

    arms: int
    blocks: Sequence[Block]
    mean: Sequence[float]  # arms x D, arm-major
    cov: Sequence[float]  # arms x D(D+1)/2, each arm's upper triangle row-major
    explore: float = 1.0  # multiplies the posterior variance of every draw
    dim: int = field(init=False)
    starts: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.arms, bool) or not isinstance(self.arms, int) or not 1 <= self.arms <= 1000:
            raise SnapshotError(f"model arms={self.arms!r}, must be an integer in [1, 1000]")
        blocks = tuple(self.blocks) if isinstance(self.blocks, (list, tuple)) else None
        if blocks is None or len(blocks) > MAX_BLOCKS or not all(isinstance(b, Block) for b in blocks):
            raise SnapshotError(f"model blocks: a list of at most {MAX_BLOCKS} blocks")
        starts = []
        dim = 1  # the intercept
        for block in blocks:
            starts.append(dim)
            dim += block.width
        if dim > MAX_COLUMNS:
            raise SnapshotError(f"model has {dim} columns, at most {MAX_COLUMNS}")
        tri = dim * (dim + 1) // 2
        if self.arms * (dim + tri) > MAX_MODEL_FLOATS:
            raise SnapshotError(
                f"model of {self.arms} arms x {dim} columns needs {self.arms * (dim + tri)} floats, "
                f"at most {MAX_MODEL_FLOATS}"
            )
        if (
            isinstance(self.explore, bool)
            or not isinstance(self.explore, (int, float))
            or not (isfinite(self.explore) and 0.0 <= self.explore <= 100.0)
        ):
            raise SnapshotError(f"model explore={self.explore!r}, must be a number in [0, 100]")
        object.__setattr__(self, "blocks", blocks)
        object.__setattr__(self, "dim", dim)
        object.__setattr__(self, "starts", tuple(starts))
        object.__setattr__(self, "mean", _table("mean", self.mean, self.arms * dim))
        cov = _table("cov", self.cov, self.arms * tri)
        object.__setattr__(self, "cov", cov)
        # Every table is finite by now; the variances (the triangles' diagonals) read in one C call.
        if min(_diagonal(self.arms, dim)(cov)) < 0.0:
            for a in range(self.arms):
                base = a * tri
                for i in range(dim):
                    if not cov[base + i * dim - i * (i - 1) // 2] >= 0.0:
                        raise SnapshotError(f"model cov of arm {a}: variance of column {i} must be >= 0")

    @property
    def inputs(self) -> tuple[str, ...]:
        """Every context feature the model reads, in first-use order."""
        return tuple(dict.fromkeys(n for b in self.blocks for n in b.inputs))

    def encode(self, context: Mapping[str, str]) -> tuple[list[int], list[float]]:
        """Active columns (ascending) and their values for a context completed with ``unknown``s."""
        cols = [0]
        vals = [1.0]
        for start, block in zip(self.starts, self.blocks, strict=True):
            offset, value = block.column(context)
            if value != 0.0:
                cols.append(start + offset)
                vals.append(value)
        return cols, vals

    def moments(self, cols: Sequence[int], vals: Sequence[float]) -> list[tuple[float, float]]:
        """(mean, variance) of every arm's score for the encoded context."""
        d = self.dim
        tri = d * (d + 1) // 2
        # Offsets and weights of x' Sigma x over the upper triangle, shared by every arm;
        # off-diagonal terms count twice. Plain loops, not sum(): CPython 3.12 made sum() of
        # floats compensated, and the edge and the origin must add in the same way.
        offsets: list[int] = []
        weights: list[float] = []
        k = len(cols)
        for p in range(k):
            i = cols[p]
            row = i * d - i * (i - 1) // 2 - i
            for q in range(p, k):
                offsets.append(row + cols[q])
                weights.append(vals[p] * vals[q] * (1.0 if p == q else 2.0))
        mean, cov = self.mean, self.cov
        out = []
        for a in range(self.arms):
            mb = a * d
            m = 0.0
            for c, v in zip(cols, vals, strict=True):
                m += mean[mb + c] * v
            cb = a * tri
            var = 0.0
            for o, w in zip(offsets, weights, strict=True):
                var += cov[cb + o] * w
            out.append((m, var if var > 0.0 else 0.0))
        return out

    def draw(self, cols: Sequence[int], vals: Sequence[float], random: Uniform) -> list[float]:
        """One Thompson score per arm: ``m + sqrt(explore * var) * z``."""
        moments = self.moments(cols, vals)
        normals = normal_variates(random, self.arms)
        return [m + sqrt(self.explore * var) * z for (m, var), z in zip(moments, normals, strict=True)]

    def reasons(self, arm: int, cols: Sequence[int], vals: Sequence[float], top: int = 2) -> list[str]:
        """The features that raised ``arm``'s expected score above the other arms' average.

        A column's push is ``x_j * (mu_arm,j - mean over arms of mu_j)``; the intercept is
        not a feature, and numeric columns read as their feature's name.
        """
        d, n = self.dim, self.arms
        mean = self.mean
        pushes: list[tuple[float, str]] = []
        for c, v in zip(cols, vals, strict=True):
            if c == 0 or n < 2:
                continue
            total = 0.0
            for a in range(n):
                total += mean[a * d + c]
            push = v * (mean[arm * d + c] - total / n)
            if push > 0.0:
                pushes.append((-push, self.label(c)))
        pushes.sort()
        return [label for _, label in pushes[:top]]

    def label(self, column: int) -> str:
        """What a column stands for: ``intercept``, ``device=mobile``, ``visits``..."""
        for start, block in zip(self.starts, self.blocks, strict=True):
            if start <= column < start + block.width:
                return block.label(column - start)
        return "intercept"
