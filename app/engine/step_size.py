"""The learning-rate rule of the subspace methods: `--lr` means the same step at every d.

A norm-preserving projection P maps a change Δθ of d coordinates to a weight change of about
the same norm, and Adam's first steps are lr·sign(g) per coordinate, so ‖ΔW‖ ≈ lr·√d: at one
fixed lr, a d = 20,000 run moved its weights 4.5 times as far per step as a d = 1000 run
(issue 22). So θ's Adam rate is lr·√(REFERENCE_DIM / d): `--lr` is the rate at d = 1000, and a
step moves the weights as far (‖ΔW‖ ≈ lr·√1000) whatever d is. A method that splits θ into
parts with projections of their own scales each part by its own share (`scales_of_parts`), so
that every output coordinate moves as far as in the single-projection case. The scales (λ)
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


def scales_of_parts(parts: list[tuple[int, int]]) -> list[float]:
    """Multipliers for θ split into parts of (d_p coordinates, D_p outputs): each output
    coordinate moves as far per step as with one projection of Σd_p into ΣD_p (per-output RMS
    lr·√(1000/ΣD_p)), however the coordinates are shared between the parts."""
    D = sum(Dp for _, Dp in parts)
    return [math.sqrt(REFERENCE_DIM * Dp / (dp * D)) if dp else 0.0 for dp, Dp in parts]
