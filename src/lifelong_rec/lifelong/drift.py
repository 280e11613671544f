"""Drift detection on the stream of a model's own errors, with river's ADWIN."""

from __future__ import annotations

import numpy as np
from river.drift import ADWIN


class DriftDetector:
    """Watches a stream of 0/1 errors (a missed next item = 1) and says when its mean shifts.

    ADWIN (Bifet and Gavaldà, 2007) keeps a window of recent values and drops its older part
    when the two parts' means differ more than chance allows at confidence ``delta``; the
    implementation is river's.

    Parameters
    ----------
    delta : float
        Confidence of a detection: smaller detects less often.
    """

    def __init__(self, delta: float = 0.002) -> None:
        if not 0 < delta < 1:
            raise ValueError(f"delta must be between 0 and 1, got {delta!r}")
        self.delta = delta
        self._adwin = ADWIN(delta=delta)
        self.detections = 0

    def update(self, errors: np.ndarray) -> bool:
        """Feed errors in order; True if a drift was detected among them."""
        detected = False
        for error in np.asarray(errors, dtype=np.float64).tolist():
            self._adwin.update(error)
            detected |= self._adwin.drift_detected
        self.detections += int(detected)
        return detected
