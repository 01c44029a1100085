"""Input-purification defenses: batched pure functions ``(N, C, H, W)`` float in ``[0, 1]`` -> same
shape, dtype and device.

Sec. IV-H2 of the paper observes that re-encoding adversarial images as JPEG "could defense the
diverse multi-label adversarial attacks to some extent" (Fig. 3). This module holds that defense,
the lossless PNG round trip it is compared with (8-bit rounding only), and two more from the
feature-squeezing family (Xu et al., NDSS 2018): bit-depth reduction and median smoothing;
:func:`make_defense` builds any of them by name. ``mlnb.defenses`` re-exports them next to the
straight-through (BPDA) wrapper and the defense evaluation.

Introduced in notebooks/09_jpeg_defense.ipynb.
"""
from __future__ import annotations

import functools
import warnings
from typing import Callable

import torch
import torch.nn.functional as F

from .validate import check_choice, check_images, check_int_range

Defense = Callable[[torch.Tensor], torch.Tensor]


class ImagesTooSmall(ValueError):
    """A defense's parameter is valid but too large for the images it was given (e.g. a median kernel
    wider than the image): raised at the call, never by :func:`make_defense`, which cannot know the size."""


def _codec():
    """torchvision.io's codecs, with its deprecation notice (torchvision 0.29) silenced."""
    from torchvision.io import decode_jpeg, decode_png, encode_jpeg, encode_png
    return encode_jpeg, decode_jpeg, encode_png, decode_png


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` float in ``[0, 1]`` -> uint8 ``round(255 x)`` on the same device (what saving
    an image file does).

    Used by :func:`png_roundtrip` and :func:`jpeg` (notebooks/09_jpeg_defense.ipynb); no notebook
    calls it directly.
    """
    return (x * 255).round().clamp(0, 255).to(torch.uint8)


def from_uint8(x8: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """uint8 -> float ``/ 255`` with ``like``'s dtype and device.

    Used by :func:`png_roundtrip` and :func:`jpeg` (notebooks/09_jpeg_defense.ipynb); no notebook
    calls it directly.
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
    quality = check_int_range("quality", quality, 1, 100)
    encode_jpeg, decode_jpeg, _, _ = _codec()
    x8 = to_uint8(x.detach()).cpu()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        decoded = decode_jpeg(encode_jpeg(list(x8), quality=quality))
    return from_uint8(torch.stack(decoded), x)


def bit_depth(x: torch.Tensor, bits: int = 4) -> torch.Tensor:
    """Reduce every channel to ``bits`` bits: ``round(x (2^bits - 1)) / (2^bits - 1)`` (feature
    squeezing, Xu et al. 2018). ``bits=8`` equals :func:`png_roundtrip`; the map is idempotent.

    ``x``: ``(N, C, H, W)`` float in ``[0, 1]``; ``bits``: int in ``[1, 8]``. Returns the same shape. Its gradient
    w.r.t. ``x`` is exactly zero (``round``): attack through it with
    ``mlnb.defenses.DefendedModel(model, bit_depth, bpda=True)`` (straight-through), or every gradient attack
    returns the clean image (gradient masking, Athalye et al. 2018; the attacks warn).

    Introduced in notebooks/09_jpeg_defense.ipynb.
    """
    check_images(x)
    bits = check_int_range("bits", bits, 1, 8)
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

    Built by ``make_defense("median", kernel=k)`` in the sweep of notebooks/09_jpeg_defense.ipynb;
    no notebook calls it by name.
    """
    check_images(x)
    if isinstance(kernel, bool) or not isinstance(kernel, int) or kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"kernel must be an odd int >= 1 (e.g. 3), got {kernel!r}")
    n, c, h, w = x.shape
    p = kernel // 2
    if p == 0:
        return x.clone()
    if min(h, w) <= p:
        raise ImagesTooSmall(f"kernel {kernel} is too large for {h}x{w} images: reflect padding needs "
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
    try:
        fn(torch.zeros(1, 3, 32, 32))  # raises here on a bad parameter
    except ImagesTooSmall:
        pass  # a valid parameter for larger images than this probe's 32x32
    return fn
