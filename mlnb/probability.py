"""Exact probability-space arithmetic from logits: the paper's formulas without float32 rounding.

The paper writes its constraints and losses on probabilities ``F_i = sigmoid(z_i)`` (Eq. 3b, 5, 9,
11, 12). Computed naively they break twice over where a model is confident:

* **values round**: ``sigmoid(z)`` is exactly ``1.0`` in float32 once ``z`` passes about 16.6, so two
  labels at logits 18 and 20 *tie* at 1.0, and a hinge such as ``max(0, F_a - F_b)`` reads 0 although
  label ``a`` still ranks above ``b``;
* **gradients vanish**: ``torch.sigmoid`` backpropagates ``p (1 - p)`` from its *rounded* output,
  exactly 0 at ``p = 1.0``, so Eq. (5) and the ``e^f`` terms of Eq. (9)/(11) stop moving a saturated
  label whatever λ is.

Everything here is computed from the logits instead, in float64, so that each value equals the
paper's formula wherever float64 can represent it and each gradient is the true derivative:

* :func:`sigmoid`: ``sigmoid(z)`` whose backward computes ``sigma(z) sigma(-z)`` from ``z`` itself
  (``e^{-|z|} / (1 + e^{-|z|})^2``), non-zero for ``|z|`` up to about 700 in float64 (about 100 once
  cast back to float32);
* :func:`centered`: ``sigmoid(z) - 0.5`` (= ``tanh(z/2)/2``), exact for tiny and huge ``z``;
* :func:`gap`: ``sigmoid(a) - sigmoid(b)`` for any pair of logits, never as a difference of two probabilities
  rounded near 1: ``sigma(-b) - sigma(-a)`` (both large positive), ``sigma(a) - sigma(b)`` (both large
  negative), ``centered(a) - centered(b)`` otherwise. Distinct logits give a non-zero gap of the right sign
  (down to differences float64 can hold); for nearly equal logits the difference keeps fewer digits
  (relative error about 1e-7 for ``a - b = 1e-9`` at ``a = 3``), which no decision reads: those are taken on
  the logits;
* :func:`exp_gap`: ``e^{sigmoid(a)} - e^{sigmoid(b)} = e^{sigmoid(b)} expm1(gap(a, b))``, the
  difference compared by Rank I / II (Eq. 9, 11);
* :func:`prob_margin`: ``s (sigmoid(z) - 0.5)`` for a target sign ``s = ±1``, the quantity of Eq. (5);
* :func:`centered_vjp`, :func:`exp_gap_vjp`: ``centered`` and ``exp_gap`` without an autograd graph, each
  with its backward as a function (the attack driver's hot loop): autograd's numbers, bit for bit.

The results are float64 tensors (cast back with ``.float()`` where a float32 tensor is needed).
Decisions (a label is positive, a constraint holds, a ranking is right) are taken on the logits
directly: ``sigmoid(z) >= 0.5`` exactly when ``z >= 0``.

Introduced in notebooks/03_ml_cw.ipynb.
"""
from __future__ import annotations

import torch

SMALL = 1.0  # |z| below this: centered() by tanh (no cancellation near 0); above: by complements


class _ExactSigmoid(torch.autograd.Function):
    """``sigmoid`` with the derivative taken from the input, not from the rounded output."""

    @staticmethod
    def forward(ctx, z):
        ctx.save_for_backward(z)
        return torch.sigmoid(z)

    @staticmethod
    def backward(ctx, grad):
        (z,) = ctx.saved_tensors
        e = torch.exp(-z.abs())
        return grad * (e / (1 + e) ** 2)


def sigmoid(z: torch.Tensor) -> torch.Tensor:
    """``sigmoid(z)`` in ``z``'s dtype whose gradient is ``sigma(z) sigma(-z)`` computed from ``z``
    (exact where ``torch.sigmoid``'s backward rounds to 0, e.g. ``z = 20`` in float32). Any shape."""
    return _ExactSigmoid.apply(z)


def _centered_parts(z):
    """Forward pieces of :func:`centered` on float64 ``z``: the value, which entries take the ``tanh``
    branch, ``tanh(z/2)`` there and ``-|z|`` (both kept for the backward)."""
    na = z.abs().neg_()
    small = na > -SMALL  # |z| < SMALL
    t = torch.tanh(torch.where(small, z, 0.0) / 2)
    far = torch.sign(z) * (0.5 - torch.sigmoid(torch.where(small, -1.0, na)))  # -|z| outside the tanh branch
    return torch.where(small, 0.5 * t, far), small, t, na


def _centered_grad(grad, na, small, t):
    """The gradient autograd gives each branch of :func:`centered`, to the bit: ``(1 - t^2) / 4`` through
    ``tanh`` near 0, ``sigma(z) sigma(-z)`` from ``-|z|`` (``na``) beyond (as :func:`sigmoid`'s backward)."""
    e = torch.exp(na)
    return torch.where(small, torch.ops.aten.tanh_backward(grad * 0.5, t) / 2, grad * (e / (1 + e) ** 2))


class _Centered(torch.autograd.Function):
    """:func:`centered` with its backward written out (:func:`_centered_grad`): a few kernels instead of
    a graph of a dozen nodes, the same numbers (it runs at every attack step)."""

    @staticmethod
    def forward(ctx, z):
        value, small, t, na = _centered_parts(z)
        ctx.save_for_backward(na, small, t)
        return value

    @staticmethod
    def backward(ctx, grad):
        return _centered_grad(grad, *ctx.saved_tensors)


def _gap_parts(a, b):
    """Forward of :func:`gap` on two float64 tensors of one shape: the value and what its backward reads."""
    hi = (a >= SMALL) & (b >= SMALL)
    lo = (a <= -SMALL) & (b <= -SMALL)
    # both complement branches at once, element by element (sigma(-b) - sigma(-a) where hi, sigma(a) -
    # sigma(b) where lo), a safe dummy (-1) elsewhere
    g = (torch.sigmoid(torch.where(hi, -b, torch.where(lo, a, -1.0)))
         - torch.sigmoid(torch.where(hi, -a, torch.where(lo, b, -1.0))))
    mid = ~(hi | lo)
    za, zb = torch.where(mid, a, 0.0), torch.where(mid, b, 0.0)
    ca, small_a, ta, na_a = _centered_parts(za)
    cb, small_b, tb, na_b = _centered_parts(zb)
    return torch.where(mid, ca - cb, g), (a, b, mid, na_a, small_a, ta, na_b, small_b, tb)


def _gap_grad(grad, a, b, mid, na_a, small_a, ta, na_b, small_b, tb):
    """Backward of :func:`gap`: through each branch, ``grad sigma(x) sigma(-x)`` (the complements) or
    :func:`_centered_grad` (the middle), with the signs of the difference."""
    ea, eb, neg = torch.exp(-a.abs()), torch.exp(-b.abs()), -grad
    grad_a = torch.where(mid, _centered_grad(grad, na_a, small_a, ta), grad * (ea / (1 + ea) ** 2))
    grad_b = torch.where(mid, _centered_grad(neg, na_b, small_b, tb), neg * (eb / (1 + eb) ** 2))  # -(g x) = (-g) x
    return grad_a, grad_b


class _Gap(torch.autograd.Function):
    """:func:`gap` on two float64 tensors of one shape, with its backward written out (:func:`_gap_grad`);
    the same numbers as autograd through the branches, in fewer kernels."""

    @staticmethod
    def forward(ctx, a, b):
        value, saved = _gap_parts(a, b)
        ctx.save_for_backward(*saved)
        return value

    @staticmethod
    def backward(ctx, grad):
        return _gap_grad(grad, *ctx.saved_tensors)


def centered(z: torch.Tensor) -> torch.Tensor:
    """``sigmoid(z) - 0.5`` in float64, any shape: ``tanh(z/2)/2`` for ``|z| < 1`` (exact near 0),
    ``sign(z) (0.5 - sigma(-|z|))`` beyond (exact gradient where ``tanh`` saturates)."""
    return _Centered.apply(z.double())


def gap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``sigmoid(a) - sigmoid(b)`` in float64 (broadcasting), never as two probabilities rounded near 1:
    ``sigma(-b) - sigma(-a)`` where both logits are ``>= 1``, ``sigma(a) - sigma(b)`` where both are ``<= -1``,
    ``centered(a) - centered(b)`` otherwise (opposite signs add magnitudes; small ones are exact).
    Its sign is the sign of ``a - b``; its gradient is the true one. For nearly equal logits the last form
    subtracts two close values and keeps fewer digits (relative error about 1e-7 for ``a - b = 1e-9``)."""
    a, b = torch.broadcast_tensors(a.double(), b.double())
    return _Gap.apply(a, b)


def exp_gap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``e^{sigmoid(a)} - e^{sigmoid(b)}`` in float64 (broadcasting): ``e^{sigmoid(b)} expm1(gap(a, b))``.
    The difference of the ``e^f`` scores that Eq. (9) and (11) compare, exact for saturated labels."""
    a, b = torch.broadcast_tensors(a.double(), b.double())
    return torch.exp(sigmoid(b)) * torch.expm1(gap(a, b))


def centered_vjp(z: torch.Tensor):
    """:func:`centered` without autograd, for a hot loop: ``(value, vjp)``, ``vjp(grad)`` the gradient w.r.t.
    ``z`` that autograd gives through :func:`centered`, to the bit."""
    value, small, t, na = _centered_parts(z.double())
    return value, lambda grad: _centered_grad(grad, na, small, t)


def exp_gap_vjp(a: torch.Tensor, b: torch.Tensor):
    """:func:`exp_gap` of two float64 tensors of one shape without autograd: ``(value, vjp)``, ``vjp(grad)``
    the gradients w.r.t. ``a`` and ``b`` that autograd gives through :func:`exp_gap`, to the bit (each
    backward formula of its graph, ``b``'s two paths summed)."""
    s = torch.sigmoid(b)
    es = torch.exp(s)
    g, saved = _gap_parts(a, b)
    em = torch.expm1(g)

    def vjp(grad):
        grad_a, grad_b = _gap_grad(grad * es * (em + 1), *saved)  # through expm1(gap(a, b))
        e = torch.exp(-b.abs())
        return grad_a, grad_b + grad * em * es * (e / (1 + e) ** 2)  # + through exp(sigmoid(b))
    return es * em, vjp


def prob_margin(z: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """``s (sigmoid(z) - 0.5)`` in float64 with ``s = +1`` where ``positive`` (the target label is
    positive) and ``-1`` elsewhere: how far a label's probability is past the 0.5 threshold on its
    target side (negative: the constraint of Eq. 4 is violated). ``z``, ``positive`` ``(N, L)``."""
    c = centered(z)
    return torch.where(positive, c, -c)


def logit(p: float) -> float:
    """``log(p / (1 - p))`` of a probability in ``(0, 1)`` (to express a hard threshold on logits)."""
    import math

    return math.log(p) - math.log1p(-p)
