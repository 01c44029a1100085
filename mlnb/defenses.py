"""The straight-through (BPDA) wrapper that attacks through an input-purification defense, and the
defense evaluation of Sec. IV-H2 (Fig. 3: histogram overlaps, success after the defense, clean mAP).

The defenses themselves (``jpeg``, ``bit_depth``, ``median_smooth``, ``png_roundtrip``,
``make_defense``) live in :mod:`mlnb.purify`.

An attacker who knows the defense can differentiate through a stand-in for it: BPDA (Athalye et
al., ICML 2018) runs the real defense forward and passes the gradient straight through
(``d defense(x) / dx ≈ I``). :class:`DefendedModel` wraps a model so any attack in
``mlnb.attacks`` can do exactly that.

Introduced in notebooks/09_jpeg_defense.ipynb.
"""
from __future__ import annotations

import torch
from torch import nn

from .purify import Defense
from .target import Target
from .validate import check_images, check_int_range


class _StraightThrough(torch.autograd.Function):
    """Forward: ``defense(x)``; backward: the identity (BPDA with ``g(x) = x``)."""

    @staticmethod
    def forward(ctx, x, defense):
        with torch.no_grad():
            return defense(x.detach()).to(dtype=x.dtype, device=x.device)

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output, None


def straight_through(defense: Defense) -> Defense:
    """Wrap a (possibly non-differentiable) defense for BPDA (Athalye et al., ICML 2018).

    The returned function computes ``defense(x)`` exactly in the forward pass and passes the
    incoming gradient unchanged in the backward pass (``∂defense(x)/∂x`` replaced by ``I``).
    ``x``: ``(N, C, H, W)`` float in ``[0, 1]``.

    Introduced in notebooks/09_jpeg_defense.ipynb.
    """
    if not callable(defense):
        raise TypeError(f"defense must be callable x -> x', got {type(defense).__name__}")

    def wrapped(x: torch.Tensor) -> torch.Tensor:
        return _StraightThrough.apply(x, defense)

    wrapped.__name__ = f"straight_through({getattr(defense, '__name__', type(defense).__name__)})"
    return wrapped


class DefendedModel(nn.Module):
    """``model(defense(x))`` as one ``nn.Module``: the defended classifier of Sec. IV-H2.

    ``forward``: ``(N, C, H, W)`` float in ``[0, 1]`` -> ``model``'s ``(N, L)`` logits. Inputs are
    clamped to ``[0, 1]`` before the defense (attacks may step a hair outside). With
    ``bpda=True`` (default) the gradient w.r.t. the input is the straight-through estimate, so
    the attacks of ``mlnb.attacks`` (e.g. ML-CW, Eq. 5) become *adaptive* attacks on the defense;
    with ``bpda=False`` the defense is applied as is (for JPEG the input gradient then does not
    exist, and for a rounding step such as :func:`mlnb.purify.bit_depth` it is exactly zero: use that
    only to evaluate; the attacks refuse the first and warn about the second). The wrapper starts in
    the wrapped model's train / eval mode.

    Introduced in notebooks/09_jpeg_defense.ipynb.
    """

    def __init__(self, model: nn.Module, defense: Defense, bpda: bool = True):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(defense):
            raise TypeError(f"defense must be callable x -> x', got {type(defense).__name__}")
        self.model = model
        self.defense = defense
        self.bpda = bool(bpda)
        self._purify = straight_through(defense) if self.bpda else defense
        self.train(model.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self._purify(x.clamp(0, 1)))

    def extra_repr(self) -> str:
        return f"defense={getattr(self.defense, '__name__', repr(self.defense))}, bpda={self.bpda}"


def histogram_overlap(a: torch.Tensor, b: torch.Tensor, bins: int = 20,
                      value_range: tuple[float, float] = (0.0, 1.0)) -> float:
    """Histogram intersection ``sum_k min(p_k, q_k)`` of two samples' normalised histograms, in
    ``[0, 1]`` (1: identical histograms). Fig. 3 of the paper compares the overlap of the
    adversarial PNG / JPEG probability histograms with the original one.

    ``a``, ``b``: 1-D tensors (e.g. ``(N,)`` probabilities of the target label); ``bins``: number
    of equal-width bins over ``value_range``.

    Introduced in notebooks/09_jpeg_defense.ipynb.
    """
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, torch.Tensor) or t.numel() == 0 or bool(t.isnan().any()):
            raise ValueError(f"{name} must be a non-empty tensor of values without NaN, got {t!r}")
    check_int_range("bins", bins, 1, 10_000)
    lo, hi = value_range
    if not lo < hi:
        raise ValueError(f"value_range must be (low, high) with low < high, got {value_range!r}: pass e.g. (0.0, 1.0)")
    ha = torch.histc(a.detach().float().flatten().cpu().clamp(lo, hi), bins=bins, min=lo, max=hi)
    hb = torch.histc(b.detach().float().flatten().cpu().clamp(lo, hi), bins=bins, min=lo, max=hi)
    return float(torch.minimum(ha / ha.sum(), hb / hb.sum()).sum())


@torch.no_grad()
def evaluate_defense(model: nn.Module, defense: Defense | None, x: torch.Tensor, y: torch.Tensor,
                     x_adv: torch.Tensor | None = None, A: torch.Tensor | None = None,
                     B: torch.Tensor | None = None, *, batch_size: int = 256) -> dict:
    """Score a defense: clean cost and protection against given adversarial images (Sec. IV-H2).

    ``model``: eval-mode ``nn.Module`` -> ``(N, L)`` logits; ``defense``: ``x -> x'`` or ``None``
    (no defense); ``x``, ``x_adv``: ``(N, C, H, W)`` in ``[0, 1]``; ``y``, ``A``, ``B``: ``(N, L)``
    bool. Returns ``{"clean_logits": (N, L), "clean_scores": (N, L) probabilities, "clean_map": float}``
    (mean per-instance AP of the defended clean images, ranked on logits,
    :func:`mlnb.metrics.average_precision`) and, with ``x_adv``, ``{"adv_logits", "adv_scores":
    (N, L), "success": (N,) bool, "success_rate": float}`` (the target met after the defense:
    :meth:`mlnb.target.Target.met`, decided on the logits).

    Introduced in notebooks/09_jpeg_defense.ipynb.
    """
    from .metrics import average_precision
    from .validate import (check_eval_model, check_finite, check_label_matrix, check_logits, check_positive,
                           check_same_rows)

    check_eval_model(model)
    check_images(x)
    check_label_matrix(y, "y")
    check_positive("batch_size", batch_size, integer=True)
    if defense is not None and not callable(defense):
        raise TypeError(f"defense must be None or a callable x -> x', got {type(defense).__name__} {defense!r}: pass "
                        "e.g. mlnb.defenses.make_defense('jpeg')")
    purify = defense if defense is not None else (lambda t: t)

    def scores(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([check_logits(model(purify(t[i:i + batch_size])), len(t[i:i + batch_size]))
                          for i in range(0, len(t), batch_size)])

    clean = scores(x)
    out = {"clean_logits": clean, "clean_scores": torch.sigmoid(clean),
           "clean_map": float(average_precision(clean, y).double().mean())}
    if x_adv is not None:
        check_images(x_adv, "x_adv")
        if A is None or B is None:
            raise ValueError("x_adv given without its target: pass A and B (the (N, L) masks of the attack)")
        check_same_rows(x=x, x_adv=x_adv, y=y, A=A, B=B)
        target = Target(y, A, B)
        adv = scores(x_adv)
        check_finite(adv, "the model's logits at the defended x_adv")
        ok = target.met(adv)
        out.update(adv_logits=adv, adv_scores=torch.sigmoid(adv), success=ok, success_rate=float(ok.float().mean()))
    return out
