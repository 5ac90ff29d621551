"""The learning-rate rule of the subspace methods: `--lr` means the same step at every d.

A norm-preserving projection P maps a change Δθ of d coordinates to a weight change of about
the same norm, and Adam's first steps are lr·sign(g) per coordinate, so ‖ΔW‖ ≈ lr·√d: at one
fixed lr, a d = 20,000 run moved its weights 4.5 times as far per step as a d = 1000 run
(issue 22). So θ's Adam rate is lr·√(REFERENCE_DIM / d): `--lr` is the rate at d = 1000, and a
step moves the weights as far (‖ΔW‖ ≈ lr·√1000) whatever d is. lowrank-v2 splits θ between
two projections in proportion to their outputs, so one rate moves every output coordinate of
both as far as a single projection would. The scales (λ)
keep the plain rate: there are a handful of them, not d. Stored task files hold θ itself, so
the rule changes nothing in how a task rebuilds.
"""

from __future__ import annotations

import math

REFERENCE_DIM = 1000
RULE = "sqrt(1000/d)"  # recorded in run fingerprints and d90 states: runs before it differ


def theta_scale(d: int) -> float:
    """The multiplier of θ's Adam rate for d projected coordinates."""
    return math.sqrt(REFERENCE_DIM / max(1, d))
