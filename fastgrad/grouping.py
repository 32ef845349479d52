"""Sparsity patterns and Curtis–Powell–Reid column grouping.

Columns of a Jacobian that share no row can be perturbed together: F(x + Σ_{c∈g} s_c e_c)
− F(x − Σ_{c∈g} s_c e_c) holds, in each row i, the difference of the one column of g that
row i depends on (Curtis, Powell & Reid, 1974).  Grouping is colouring the column
intersection graph (columns adjacent when they share a row); a tridiagonal Jacobian needs
3 groups, a 5-point Laplacian 5, whatever n.  Two greedy colourings are made and the one
with fewer groups kept:

* SciPy's (``scipy.optimize._numdiff.group_columns``): take the first ungrouped column, then
  every later ungrouped column whose rows miss the group's union of rows; here in the
  columns' natural order (SciPy's default is a random one), which gives a band matrix's
  width (3 for tridiagonal; SciPy's random order gives 5 at n = 1000);
* DSATUR (Brélaz, 1979): colour next the column whose neighbours already hold the most
  distinct groups (ties: the most rows' worth of neighbours, then the lowest index), with
  the lowest group free.  On the 5-point Laplacian it finds the optimal 5, where the
  natural order gives 7 and SciPy's random order 10 (100 × 100 grid).

Each costs Σ_rows (entries in the row)², the work of visiting every pair of columns that
share a row.
"""

from __future__ import annotations

import heapq
import sys
from dataclasses import dataclass

import numba
import numpy as np

from .errors import InputError


@dataclass(frozen=True)
class Pattern:
    """The entries (rows[k], cols[k]) of an m × n pattern, unique, sorted by column then row;
    ``indptr`` (n + 1) indexes each column's entries (compressed sparse columns)."""

    shape: tuple[int, int]
    rows: np.ndarray  # int64
    cols: np.ndarray  # int64
    indptr: np.ndarray  # int64

    @classmethod
    def from_entries(cls, shape: tuple[int, int], rows, cols) -> Pattern:
        m, n = shape
        keys = np.unique(np.asarray(cols, dtype=np.int64) * m + np.asarray(rows, dtype=np.int64))
        cols, rows = np.divmod(keys, m)
        indptr = np.concatenate([[0], np.cumsum(np.bincount(cols, minlength=n))]).astype(np.int64)
        return cls((m, n), rows.astype(np.int64), cols.astype(np.int64), indptr)

    def union(self, other: Pattern) -> Pattern:
        return Pattern.from_entries(self.shape, np.concatenate([self.rows, other.rows]),
                                    np.concatenate([self.cols, other.cols]))

    def __len__(self) -> int:
        return self.rows.size


def is_sparse(value) -> bool:
    """A ``scipy.sparse`` matrix or array (SciPy is not imported for the test: a sparse
    value means it already was)."""
    sparse = sys.modules.get("scipy.sparse")
    return sparse is not None and bool(sparse.issparse(value))


def is_linear_operator(value) -> bool:
    """A ``scipy.sparse.linalg.LinearOperator`` (without importing SciPy)."""
    linalg = sys.modules.get("scipy.sparse.linalg")
    return linalg is not None and isinstance(value, linalg.LinearOperator)


def pattern_of(value, columns: int, what: str, permutation: np.ndarray | None = None) -> Pattern:
    """The pattern of a dense array (its nonzeros; m × n or anything with n columns flattened
    to 2-D) or of a sparse matrix (its stored entries), columns mapped through ``permutation``
    (user column u is flat column permutation[u]); InputError on a wrong column count."""
    if is_sparse(value):
        coo = value.tocoo()
        rows, cols, shape = np.asarray(coo.row), np.asarray(coo.col), coo.shape
    else:
        array = np.asarray(value)
        if array.ndim != 2 or array.dtype.kind not in "biuf":
            raise InputError(f"{what} must be a 2-D array or a scipy.sparse matrix, got "
                             f"shape {array.shape}, dtype {array.dtype}")
        rows, cols = np.nonzero(array)
        shape = array.shape
    if shape[1] != columns:
        raise InputError(f"{what} has {shape[1]} columns, x has {columns} coordinates")
    if permutation is not None:
        cols = permutation[cols]
    return Pattern.from_entries((int(shape[0]), int(shape[1])), rows, cols)


#: DSATUR keeps, per column, which groups its neighbours hold: n × (largest degree + 1) flags,
#: made only up to this many (else SciPy's greedy alone).
DSATUR_FLAGS = 2**26


def group_columns(pattern: Pattern) -> np.ndarray:
    """Each column's group (0, 1, ...): columns of a group share no row; the fewer groups of
    the natural-order greedy and DSATUR (see the module docstring)."""
    m, n = pattern.shape
    greedy = _greedy_groups(m, n, pattern.indptr, pattern.rows)
    by_row = np.argsort(pattern.rows, kind="stable")
    row_ptr = np.concatenate([[0], np.cumsum(np.bincount(pattern.rows, minlength=m))]).astype(np.int64)
    row_cols = pattern.cols[by_row]
    row_sizes = np.diff(row_ptr)
    reach = np.zeros(n, dtype=np.int64)  # Σ over a column's rows of their sizes: ≥ its degree + 1
    np.add.at(reach, pattern.cols, row_sizes[pattern.rows])
    width = int(min(reach.max(initial=1), n)) + 1
    if n * width > DSATUR_FLAGS:
        return greedy
    saturated = _dsatur(n, pattern.indptr, pattern.rows, row_ptr, row_cols, reach, width)
    return saturated if saturated.max(initial=-1) < greedy.max(initial=-1) else greedy


@numba.njit(cache=True)
def _greedy_groups(m, n, indptr, rows):
    groups = np.full(n, -1, dtype=np.int64)
    union = np.zeros(m, dtype=np.bool_)
    current = 0
    first = 0
    while first < n:
        if groups[first] >= 0:
            first += 1
            continue
        union[:] = False
        for j in range(first, n):
            if groups[j] >= 0:
                continue
            clash = False
            for k in range(indptr[j], indptr[j + 1]):
                if union[rows[k]]:
                    clash = True
                    break
            if not clash:
                for k in range(indptr[j], indptr[j + 1]):
                    union[rows[k]] = True
                groups[j] = current
        current += 1
    return groups


@numba.njit(cache=True)
def _dsatur(n, indptr, rows, row_ptr, row_cols, reach, width):
    groups = np.full(n, -1, dtype=np.int64)
    held = np.zeros((n, width), dtype=np.bool_)  # held[c, g]: a neighbour of c is in group g
    saturation = np.zeros(n, dtype=np.int64)
    heap = [(0, -reach[c], c) for c in range(n)]  # (−saturation, −reach, column), lazily updated
    heapq.heapify(heap)
    while heap:
        negative, _, c = heapq.heappop(heap)
        if groups[c] >= 0 or -negative != saturation[c]:
            continue  # coloured already, or a stale entry
        group = 0
        while held[c, group]:
            group += 1
        groups[c] = group
        for k in range(indptr[c], indptr[c + 1]):
            r = rows[k]
            for q in range(row_ptr[r], row_ptr[r + 1]):
                other = row_cols[q]
                if groups[other] < 0 and not held[other, group]:
                    held[other, group] = True
                    saturation[other] += 1
                    heapq.heappush(heap, (-saturation[other], -reach[other], other))
    return groups
