"""Bounds on the learner's hyperparameters that its settings, the learner and its checkpoint
reader share: one number each, so that no value one of them accepts is refused by another.

Torch-free, so that the command line's settings can import it without loading torch.
"""

from __future__ import annotations

#: The most optimizer steps on one micro-batch (``--steps-per-batch``): each costs a forward and
#: a backward pass, so far fewer are useful; the bound keeps a typo from stalling the service.
MAX_STEPS_PER_BATCH = 1000
