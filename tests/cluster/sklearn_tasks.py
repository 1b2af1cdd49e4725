"""An estimator whose fit kills its worker for one parameter value (importable by workers)."""

from __future__ import annotations

import os
from typing import Any

from sklearn.linear_model import LogisticRegression


class CrashingLogisticRegression(LogisticRegression):
    """LogisticRegression that ends its process with ``os._exit`` when ``C == 10``."""

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> Any:
        if self.C == 10:
            os._exit(3)
        return super().fit(X, y, sample_weight=sample_weight)
