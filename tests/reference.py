"""The statistics computed the slow, obvious way, as the yardstick for the streaming code."""

from __future__ import annotations

import math

import numpy as np

from gradcheck.analysis.stats import TensorStats


def reference(values: np.ndarray) -> TensorStats:
    """TensorStats of `values` from a float64 copy with plain numpy."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    finite = np.abs(x[np.isfinite(x)])
    top = float(finite.max()) if finite.size else 0.0
    # Sums of |x| / 2^e when squares would leave float64 (beyond 2^+-400), e from the largest |x|.
    scale = 2.0 ** (math.frexp(top)[1] - 1) if top > 2.0**400 or 0 < top < 2.0**-400 else 1.0
    scaled = finite / scale
    return TensorStats(
        count=x.size,
        nan=int(np.isnan(x).sum()),
        inf=int(np.isinf(x).sum()),
        zeros=int((finite == 0).sum()),
        abs_min=float(finite.min()) if finite.size else math.inf,
        abs_max=float(finite.max()) if finite.size else 0.0,
        abs_sum=float(scaled.sum()),
        sq_sum=float((scaled**2).sum()),
        scale=scale,
    )
