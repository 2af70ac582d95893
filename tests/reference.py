"""The statistics computed the slow, obvious way, as the yardstick for the streaming code."""

from __future__ import annotations

import math

import numpy as np

from gradcheck.analysis.stats import TensorStats


def reference(values: np.ndarray) -> TensorStats:
    """TensorStats of `values` from a float64 copy with plain numpy."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    finite = np.abs(x[np.isfinite(x)])
    return TensorStats(
        count=x.size,
        nan=int(np.isnan(x).sum()),
        inf=int(np.isinf(x).sum()),
        zeros=int((finite == 0).sum()),
        abs_min=float(finite.min()) if finite.size else math.inf,
        abs_max=float(finite.max()) if finite.size else 0.0,
        abs_sum=float(finite.sum()),
        sq_sum=float((finite**2).sum()),
    )
