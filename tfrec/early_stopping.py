"""The one early-stopping rule of the model and of every learned baseline.

Keras' ``EarlyStopping`` meaning: an epoch improves when its validation value
is strictly higher than the best so far (NaN never improves); training stops
after ``patience`` epochs in a row without improvement, and patience 0 stops
at the first epoch without improvement (as patience 1 does). The model's
checkpoints keep ``best``, ``best_epoch`` and ``wait`` in ``state.json``, so
a resumed run carries on counting where it stopped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

IMPROVED, WAIT, STOP = "improved", "wait", "stop"


@dataclass
class EarlyStopping:
    """The rule's state for one training run; :meth:`update` once per epoch.

    Attributes:
      patience: epochs without improvement before stopping (``train.early_stopping_patience``).
      best: the best validation value so far (-inf before the first epoch).
      best_epoch: the 0-based epoch that reached ``best`` (-1 before the first, or the untrained start).
      wait: epochs since ``best_epoch``.
    """

    patience: int
    best: float = -math.inf
    best_epoch: int = -1
    wait: int = 0

    def update(self, epoch: int, value: float) -> str:
        """Takes epoch ``epoch``'s validation value; returns ``IMPROVED``, ``WAIT`` or ``STOP``."""
        value = float(value)
        if value > self.best:  # False for NaN
            self.best, self.best_epoch, self.wait = value, epoch, 0
            return IMPROVED
        self.wait += 1
        return STOP if self.wait >= self.patience else WAIT
