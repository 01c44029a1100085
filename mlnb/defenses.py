"""Input-purification defenses and the straight-through (BPDA) wrapper that attacks through them.

Sec. IV-H2 of the paper observes that re-encoding adversarial images as JPEG "could defense the
diverse multi-label adversarial attacks to some extent" (Fig. 3). This module holds that defense
and two more from the feature-squeezing family (Xu et al., NDSS 2018): bit-depth reduction and
median smoothing. Every defense is a batched pure function ``(N, C, H, W)`` float in ``[0, 1]``
-> same shape, dtype and device.

An attacker who knows the defense can differentiate through a stand-in for it: BPDA (Athalye et
al., ICML 2018) runs the real defense forward and passes the gradient straight through
(``d defense(x) / dx ≈ I``). :class:`DefendedModel` wraps a model so any attack in
``mlnb.attacks`` can do exactly that.

Introduced in notebooks/09_jpeg_defense.ipynb.
"""
from __future__ import annotations

import functools
import warnings
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .validate import check_choice, check_images

Defense = Callable[[torch.Tensor], torch.Tensor]


def _check_int_range(name: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int in [{lo}, {hi}], got {type(value).__name__} {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must lie in [{lo}, {hi}], got {value}: pass e.g. {name}={hi}")
    return value


def _codec():
    """torchvision.io's codecs, with its deprecation notice (torchvision 0.29) silenced."""
    from torchvision.io import decode_jpeg, decode_png, encode_jpeg, encode_png
    return encode_jpeg, decode_jpeg, encode_png, decode_png


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` float in ``[0, 1]`` -> uint8 ``round(255 x)`` on the same device (what saving
    an image file does).

    Introduced in notebooks/09_jpeg_defense.ipynb.
    """
    return (x * 255).round().clamp(0, 255).to(torch.uint8)


def from_uint8(x8: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """uint8 -> float ``/ 255`` with ``like``'s dtype and device.

    Introduced in notebooks/09_jpeg_defense.ipynb.
    """
    return x8.to(device=like.device, dtype=like.dtype) / 255


def png_roundtrip(x: torch.Tensor, *, encode: bool = False) -> torch.Tensor:
    """Save as a lossless 8-bit PNG and read back: ``round(255 x) / 255``.

    ``x``: ``(N, C, H, W)`` float in ``[0, 1]``; returns the same shape, dtype and device. The
    paper's Fig. 3 compares adversarial images "saved as PNG" with their JPEG versions; PNG is
    lossless, so the only change is the 8-bit rounding. With ``encode=True`` every image really
    goes through ``torchvision.io.encode_png`` / ``decode_png`` (on the CPU), which gives the same
    tensor (the unit tests check it) but is slower. ``C`` must be 1 or 3 when ``encode=True``.

    Introduced in notebooks/09_jpeg_defense.ipynb.
    """
    check_images(x)
    x8 = to_uint8(x)
    if encode:
        _check_channels(x)
        _, _, encode_png, decode_png = _codec()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            x8 = torch.stack([decode_png(encode_png(img)) for img in x8.cpu()])
    return from_uint8(x8, x)


def _check_channels(x: torch.Tensor) -> None:
    if x.shape[1] not in (1, 3):
        raise ValueError(f"image codecs need 1 (grey) or 3 (RGB) channels, got C={x.shape[1]}")


def jpeg(x: torch.Tensor, quality: int = 75) -> torch.Tensor:
    """Re-encode every image as a JPEG of the given ``quality`` and decode it (Sec. IV-H2, Fig. 3).

    ``x``: ``(N, C, H, W)`` float in ``[0, 1]`` with ``C`` in ``{1, 3}``; ``quality``: int in
    ``[1, 100]``. Images are rounded to 8 bits, encoded as one batched list with
    ``torchvision.io.encode_jpeg`` on the CPU, decoded with ``decode_jpeg`` and moved back to
    ``x.device``. Returns ``(N, C, H, W)`` float in ``[0, 1]``, same dtype and device. Not
    differentiable: wrap it with :func:`straight_through` to attack through it.

    Introduced in notebooks/09_jpeg_defense.ipynb.
    """
    check_images(x)
    _check_channels(x)
    quality = _check_int_range("quality", quality, 1, 100)
    encode_jpeg, decode_jpeg, _, _ = _codec()
    x8 = to_uint8(x.detach()).cpu()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        decoded = decode_jpeg(encode_jpeg(list(x8), quality=quality))
    return from_uint8(torch.stack(decoded), x)


def bit_depth(x: torch.Tensor, bits: int = 4) -> torch.Tensor:
    """Reduce every channel to ``bits`` bits: ``round(x (2^bits - 1)) / (2^bits - 1)`` (feature
    squeezing, Xu et al. 2018). ``bits=8`` equals :func:`png_roundtrip`; the map is idempotent.

    ``x``: ``(N, C, H, W)`` float in ``[0, 1]``; ``bits``: int in ``[1, 8]``. Returns the same shape.

    Introduced in notebooks/09_jpeg_defense.ipynb.
    """
    check_images(x)
    bits = _check_int_range("bits", bits, 1, 8)
    levels = 2 ** bits - 1
    return (x * levels).round() / levels


@functools.lru_cache(maxsize=None)
def _median_network(n: int) -> tuple[tuple[int, int], ...]:
    """Compare-exchange pairs of Batcher's odd-even merge sort on ``n`` inputs (padded with +inf to a
    power of two, so pairs touching the padding are dropped), pruned to those the middle output
    ``n // 2`` depends on."""
    size = 1
    while size < n:
        size *= 2
    pairs, p = [], 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p) and i + j + k < n:
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    needed, kept = {n // 2}, []
    for a, b in reversed(pairs):
        if a in needed or b in needed:
            kept.append((a, b))
            needed |= {a, b}
    return tuple(reversed(kept))


def median_smooth(x: torch.Tensor, kernel: int = 3) -> torch.Tensor:
    """Per-channel median filter over a ``kernel x kernel`` window with reflect padding (feature
    squeezing, Xu et al. 2018).

    ``x``: ``(N, C, H, W)`` float in ``[0, 1]`` with ``H, W > kernel // 2``; ``kernel``: odd int
    ``>= 1`` (1 is the identity). Returns the same shape, dtype and device. The ``kernel**2``
    shifted views of the padded image (what ``F.unfold`` gathers) go through a sorting network of
    elementwise min / max, which gives exactly ``unfold(...).median(1)`` (checked in the tests)
    about 3x faster on a CPU.

    Introduced in notebooks/09_jpeg_defense.ipynb.
    """
    check_images(x)
    if isinstance(kernel, bool) or not isinstance(kernel, int) or kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"kernel must be an odd int >= 1 (e.g. 3), got {kernel!r}")
    n, c, h, w = x.shape
    p = kernel // 2
    if p == 0:
        return x.clone()
    if min(h, w) <= p:
        raise ValueError(f"kernel {kernel} is too large for {h}x{w} images: reflect padding needs "
                         f"H and W > {p}; pass a smaller kernel")
    padded = F.pad(x.reshape(n * c, 1, h, w), (p, p, p, p), mode="reflect")[:, 0]
    v = [padded[:, i:i + h, j:j + w] for i in range(kernel) for j in range(kernel)]
    for a, b in _median_network(kernel * kernel):
        v[a], v[b] = torch.minimum(v[a], v[b]), torch.maximum(v[a], v[b])
    return v[kernel * kernel // 2].reshape(n, c, h, w)


DEFENSES: dict[str, Callable[..., torch.Tensor]] = {
    "png": png_roundtrip,
    "jpeg": jpeg,
    "bit_depth": bit_depth,
    "median": median_smooth,
}


def make_defense(name: str, **params) -> Defense:
    """A one-argument defense ``x -> defense(x, **params)`` by name (``"png"``, ``"jpeg"``,
    ``"bit_depth"``, ``"median"``); parameters are checked now, not at the first call.

    Introduced in notebooks/09_jpeg_defense.ipynb.
    """
    check_choice("defense", name, DEFENSES)
    fn = functools.partial(DEFENSES[name], **params)
    fn(torch.zeros(1, 3, 32, 32))  # raises here on a bad parameter
    return fn


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
    exist: use that only to evaluate). The wrapper starts in the wrapped model's train / eval mode.

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
        if not isinstance(t, torch.Tensor) or t.numel() == 0:
            raise ValueError(f"{name} must be a non-empty tensor of values, got {t!r}")
    _check_int_range("bins", bins, 1, 10_000)
    lo, hi = value_range
    ha = torch.histc(a.detach().float().flatten().cpu().clamp(lo, hi), bins=bins, min=lo, max=hi)
    hb = torch.histc(b.detach().float().flatten().cpu().clamp(lo, hi), bins=bins, min=lo, max=hi)
    return float(torch.minimum(ha / ha.sum(), hb / hb.sum()).sum())


def target_met(logits: torch.Tensor, y: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """``(N,)`` bool: the attack's classification target holds, every label of ``A`` flipped and
    every label of ``B`` kept at the 0.5 threshold (Sec. II), decided on the ``(N, L)`` logits
    (:func:`mlnb.attack_losses.constraints_met`: logit ``>= 0`` is positive).

    Introduced in notebooks/09_jpeg_defense.ipynb.
    """
    from .attack_losses import n_met

    return n_met(logits, y ^ A, A | B) == (A | B).sum(1)


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
    (N, L), "success": (N,) bool, "success_rate": float}`` (target met after the defense, decided on
    logits by :func:`target_met`).

    Introduced in notebooks/09_jpeg_defense.ipynb.
    """
    from .metrics import average_precision
    from .validate import check_eval_model, check_label_matrix, check_same_rows

    check_eval_model(model)
    check_images(x)
    check_label_matrix(y, "y")
    purify = defense if defense is not None else (lambda t: t)

    def scores(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([model(purify(t[i:i + batch_size])) for i in range(0, len(t), batch_size)])

    clean = scores(x)
    out = {"clean_logits": clean, "clean_scores": torch.sigmoid(clean),
           "clean_map": float(average_precision(clean, y).double().mean())}
    if x_adv is not None:
        check_images(x_adv, "x_adv")
        if A is None or B is None:
            raise ValueError("x_adv given without its target: pass A and B (the (N, L) masks of the attack)")
        check_same_rows(x=x, x_adv=x_adv, y=y, A=A, B=B)
        adv = scores(x_adv)
        ok = target_met(adv, y, A, B)
        out.update(adv_logits=adv, adv_scores=torch.sigmoid(adv), success=ok, success_rate=float(ok.float().mean()))
    return out
