"""The driver alone: the ceiling that any loss of ML-CW, Rank I or Rank II can reach on a model.

The three search attacks share one driver (:mod:`mlnb.attacks._driver`): per step it forms the iterate from
Adam's variable (the change of variables), takes one forward and one backward through the model, sums the
float64 distortion, selects the best iterate and takes the per-image Adam step. An attack adds only its loss.
Running the driver with :func:`free_loss`, a loss that costs almost nothing, measures what the driver's own
passes cost beside the model: no attack built on it can have a higher throughput ratio than this one, and the
room left for a loss before the ratio drops under a goal ``g`` is ``base / g - base / r`` milliseconds per
step, ``base`` the model's step and ``r`` the driver's ratio (:func:`step_ms`, :func:`room_ms`).

Used by :mod:`benchmarks.run_all` (its throughput section times this row beside the attacks).
"""
from __future__ import annotations

import torch

from mlnb.attacks import _driver
from mlnb.attacks._core import Runtime
from mlnb.target import Target

NAME = "driver alone"


def free_loss(logits: torch.Tensor, state) -> tuple:
    """A loss of (almost) no cost in the driver's form: hinge 0, goal never reached, progress 0, and a gradient
    of 1 w.r.t. every logit. The gradient is not 0 so that Adam's moments stay normal floats, as in an attack
    (subnormal ones would slow every pass over them and make the driver look dearer than it is)."""
    zero = logits.new_zeros(logits.shape[0], dtype=torch.float64)
    return zero, torch.zeros_like(zero, dtype=torch.bool), zero, lambda lam: torch.ones_like(logits)


def run(model, x: torch.Tensor, y: torch.Tensor, A: torch.Tensor, B: torch.Tensor, *, lambda_init: float,
        n_search: int, max_iter: int, check_every: int, lr: float = 0.01, tanh_eps: float = 1e-6):
    """The driver with :func:`free_loss` on ``x`` ``(n, C, H, W)`` and its target, no early abort: the same
    steps as an attack with the same search parameters. Returns the driver's :class:`~mlnb.attacks.AttackResult`."""
    return _driver.run_search(NAME, Runtime(model), x, Target(y, A, B), free_loss, False, "constraints",
                              "constraints", lambda_init=lambda_init, n_search=n_search, max_iter=max_iter, lr=lr,
                              tanh_eps=tanh_eps, check_every=check_every, batch_size=None, early_abort=False,
                              trace=False)


def step_ms(base_ms: float, ratio: float) -> float:
    """The milliseconds of a step whose throughput ratio over a ``base_ms`` baseline step is ``ratio``."""
    return base_ms / ratio


def room_ms(base_ms: float, driver_ratio: float, goal: float) -> float:
    """Milliseconds per step a loss may add to the driver before the ratio drops under ``goal``, given the
    baseline step ``base_ms`` and the driver's own ratio (negative: the driver alone is below the goal)."""
    return step_ms(base_ms, goal) - step_ms(base_ms, driver_ratio)
