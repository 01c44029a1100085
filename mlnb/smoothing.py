"""Certified label sets by randomized smoothing (Cohen, Rosenfeld and Kolter, ICML 2019).

Each label's decision of the target model (``f_i(x) >= 0.5``, i.e. logit ``>= 0``, Eq. 3b) is
smoothed by Gaussian noise:

.. math::

    g_i(x) = \\mathbb{1}\\big[P_δ(f_i(x + δ) ≥ 0.5) > 1/2\\big], \\qquad δ \\sim N(0, σ^2 I).

If the probability ``p_i`` that the noisy decision agrees with ``g_i(x)`` has a lower bound
``\\underline{p}_i > 1/2``, then ``g_i(x + r) = g_i(x)`` for every ``||r||_2 < R_i = σ Φ^{-1}(\\underline{p}_i)``
(Cohen et al., Theorem 1, the binary case: ``p_B = 1 - p_A``). :func:`certify` follows their
CERTIFY: ``n0`` *selection* samples pick each label's decision, ``n`` fresh *estimation* samples count
agreements, and a one-sided Clopper-Pearson bound (``scipy.stats.beta``) at level ``α / L``
(Bonferroni over the ``L`` labels) makes all ``L`` statements hold together with probability at
least ``1 - α``. The label set is certified at ``R = min_i R_i``; a label with
``\\underline{p}_i ≤ 1/2`` abstains, and so does its label set. Within ``R`` no targeted attack of
the paper (flip ``A``, keep ``B``) can succeed on the smoothed classifier.

Relation to MultiGuard (Jia et al., NeurIPS 2022): MultiGuard smooths a multi-label classifier's
*top-k* prediction and certifies that at least ``e`` ground-truth labels stay among the top ``k``
under any L2 perturbation within a radius, deriving that radius jointly from the label
probabilities (a Neyman-Pearson argument over all labels, no union bound). Ours certifies the
thresholded label set of Eq. 3b, label by label, with the binary radius of Cohen et al. and a
Bonferroni correction: a stronger statement (every positive *and* negative decision is fixed, as the
paper's targeted threat model with ``A`` and ``B`` requires) that pays for it with the ``α / L``
level and the minimum over labels.

Introduced in notebooks/12_robust_training.ipynb.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import beta, norm
from torch import nn
from tqdm.auto import tqdm

from .validate import check_eval_model, check_images, check_int, check_label_matrix, check_positive


def _check_alpha(alpha) -> None:
    check_positive("alpha", alpha)
    if not alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}: pass e.g. alpha=0.001")


def _noise(shape, sigma: float, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """``N(0, σ²)`` noise of ``shape``, drawn on the generator's device and moved to ``like``'s."""
    dev = generator.device if generator is not None else like.device
    return (torch.randn(shape, generator=generator, device=dev) * sigma).to(like.device, like.dtype)


def clopper_pearson_lower(k, n: int, alpha: float) -> np.ndarray:
    """One-sided ``1 - alpha`` Clopper-Pearson lower bound on a binomial probability from ``k`` successes
    of ``n`` trials: the ``alpha`` quantile of ``Beta(k, n - k + 1)``, 0 where ``k = 0``. ``k``: counts of
    any shape (tensor or array); returns float64 of the same shape.

    Introduced in notebooks/12_robust_training.ipynb.
    """
    check_int("n", n)
    _check_alpha(alpha)
    k = np.asarray(k.detach().cpu() if isinstance(k, torch.Tensor) else k, dtype=np.float64)
    if (k < 0).any() or (k > n).any():
        raise ValueError(f"k must lie in [0, n] = [0, {n}], got values in [{k.min()}, {k.max()}]")
    out = beta.ppf(alpha, np.maximum(k, 1), n - k + 1)
    return np.where(k == 0, 0.0, out)


@torch.no_grad()
def noise_counts(model: nn.Module, x: torch.Tensor, *, sigma: float, n: int, batch_size: int = 1000,
                 generator: torch.Generator | None = None, progress: bool = True) -> torch.Tensor:
    """How often each label is positive under Gaussian noise: ``(N, L)`` int64 counts of
    ``f_i(x + δ_k) >= 0.5`` (logit ``>= 0``) over ``n`` draws ``δ_k ~ N(0, σ² I)`` per image.

    ``x`` ``(N, C, H, W)`` in ``[0, 1]`` (the noisy inputs are not clipped, as in Cohen et al.);
    ``model`` in eval mode, on ``x``'s device. The ``N n`` noisy images run in batches of
    ``batch_size`` (one tqdm bar), and the noise is drawn batch by batch: one ``generator`` state and one
    ``batch_size`` give the same counts, another ``batch_size`` other draws of the same distribution.
    Introduced in notebooks/12_robust_training.ipynb.
    """
    check_eval_model(model)
    check_images(x)
    check_positive("sigma", sigma)
    check_int("n", n)
    check_int("batch_size", batch_size)
    total, counts = x.shape[0] * n, None
    bar = tqdm(total=total, disable=not progress, desc=f"smoothing σ={sigma:g}", unit="sample", leave=False)
    for start in range(0, total, batch_size):
        img = torch.arange(start, min(start + batch_size, total), device=x.device) // n
        xb = x[img]
        positive = model(xb + _noise(xb.shape, sigma, generator, xb)) >= 0
        if counts is None:
            counts = torch.zeros(x.shape[0], positive.shape[1], dtype=torch.int64, device=x.device)
        counts.index_add_(0, img, positive.to(torch.int64))
        bar.update(len(img))
    bar.close()
    return counts


@dataclass
class Certificate:
    """The certified label sets of :func:`certify`, for ``N`` images and ``L`` labels.

    * ``prediction`` ``(N, L)`` bool: the smoothed classifier's label set ``g(x)`` (from the selection samples).
    * ``p_lower`` ``(N, L)`` float64: the Clopper-Pearson lower bound on ``P(f_i(x+δ) agrees with g_i(x))``.
    * ``abstain`` ``(N, L)`` bool: ``p_lower <= 1/2`` (no certificate for that label).
    * ``radius`` ``(N, L)`` float64: ``σ Φ^{-1}(p_lower)``, L2 on the ``[0, 1]`` scale; NaN where abstaining.
    * ``set_radius`` ``(N,)`` float64: the minimum over the labels; NaN where any label abstains.
    * ``counts_selection`` / ``counts_estimation`` ``(N, L)``: positives among the ``n0`` / ``n`` draws.
    * ``sigma``, ``alpha``, ``n0``, ``n``: the settings.

    Introduced in notebooks/12_robust_training.ipynb.
    """

    prediction: torch.Tensor
    p_lower: torch.Tensor
    abstain: torch.Tensor
    radius: torch.Tensor
    set_radius: torch.Tensor
    counts_selection: torch.Tensor
    counts_estimation: torch.Tensor
    sigma: float
    alpha: float
    n0: int
    n: int

    @property
    def certified(self) -> torch.Tensor:
        """``(N,)`` bool: every label of the image holds a certificate."""
        return ~self.abstain.any(1)

    def select(self, rows: torch.Tensor) -> "Certificate":
        """The certificates of the images ``rows`` (an index tensor or a bool mask of ``N``)."""
        pick = {k: getattr(self, k)[rows] for k in ("prediction", "p_lower", "abstain", "radius", "set_radius",
                                                    "counts_selection", "counts_estimation")}
        return Certificate(**pick, sigma=self.sigma, alpha=self.alpha, n0=self.n0, n=self.n)


def certificate_from_counts(counts_selection: torch.Tensor, counts_estimation: torch.Tensor, *, n0: int, n: int,
                            sigma: float, alpha: float) -> Certificate:
    """Cohen et al.'s CERTIFY per label from Monte Carlo counts ``(N, L)`` (positives among ``n0``
    selection and ``n`` estimation draws): ``g_i`` = majority of the selection draws (ties: negative),
    ``p_lower`` = one-sided Clopper-Pearson bound at level ``alpha / L`` on the estimation draws that agree
    with it, radius ``σ Φ^{-1}(p_lower)`` (abstain when ``p_lower <= 1/2``); see :class:`Certificate`.

    Introduced in notebooks/12_robust_training.ipynb.
    """
    check_int("n0", n0)
    check_int("n", n)
    check_positive("sigma", sigma)
    _check_alpha(alpha)
    if counts_selection.shape != counts_estimation.shape or counts_selection.dim() != 2:
        raise ValueError(f"counts_selection {tuple(counts_selection.shape)} and counts_estimation "
                         f"{tuple(counts_estimation.shape)} must both be (N, L)")
    for name, counts, draws in (("counts_selection", counts_selection, n0), ("counts_estimation", counts_estimation, n)):
        if counts.is_floating_point() or counts.dtype == torch.bool or bool(((counts < 0) | (counts > draws)).any()):
            raise ValueError(f"{name} must hold integer counts in [0, {draws}] (positives among its draws), got "
                             f"{counts.dtype} values in [{counts.min().item()}, {counts.max().item()}]: check that "
                             f"n0 ({n0}) and n ({n}) are the draws the counts come from, in that order")
    prediction = 2 * counts_selection > n0
    agree = torch.where(prediction, counts_estimation, n - counts_estimation)
    n_labels = counts_selection.shape[1]
    p_lower = torch.from_numpy(clopper_pearson_lower(agree, n, alpha / n_labels)).to(agree.device)
    abstain = p_lower <= 0.5
    radius = torch.from_numpy(sigma * norm.ppf(p_lower.cpu().numpy())).to(agree.device)
    radius = torch.where(abstain, torch.full_like(radius, float("nan")), radius)
    set_radius = torch.where(abstain.any(1), torch.full_like(radius[:, 0], float("nan")), radius.min(1).values)
    return Certificate(prediction, p_lower, abstain, radius, set_radius, counts_selection, counts_estimation,
                       float(sigma), float(alpha), int(n0), int(n))


def certify(model: nn.Module, x: torch.Tensor, *, sigma: float, n0: int = 100, n: int = 1000, alpha: float = 0.001,
            batch_size: int = 1000, generator: torch.Generator | None = None, progress: bool = True) -> Certificate:
    """Certified label sets of the smoothed classifier (Cohen et al., ICML 2019, CERTIFY, per label with a
    Bonferroni correction): ``n0`` selection draws and ``n`` separate estimation draws of
    ``δ ~ N(0, σ² I)`` per image (:func:`noise_counts`), then :func:`certificate_from_counts`. With
    probability at least ``1 - alpha`` over the draws, every non-abstaining label of an image keeps its
    decision for all L2 perturbations smaller than its radius.

    ``x`` ``(N, C, H, W)`` in ``[0, 1]``; returns a :class:`Certificate`.

    Introduced in notebooks/12_robust_training.ipynb.
    """
    _check_alpha(alpha)
    check_int("n0", n0)
    sel = noise_counts(model, x, sigma=sigma, n=n0, batch_size=batch_size, generator=generator, progress=progress)
    est = noise_counts(model, x, sigma=sigma, n=n, batch_size=batch_size, generator=generator, progress=progress)
    return certificate_from_counts(sel, est, n0=n0, n=n, sigma=sigma, alpha=alpha)


def certified_accuracy(cert: Certificate, y: torch.Tensor, radii) -> torch.Tensor:
    """Certified accuracy of the whole label set against the radius: ``(R,)`` float64, the fraction of
    images whose smoothed label set is certified, equals ``y`` on every label, and has ``set_radius >= r``,
    for each ``r`` of ``radii`` (L2, ``[0, 1]`` scale). ``y`` ``(N, L)`` bool.

    Introduced in notebooks/12_robust_training.ipynb.
    """
    check_label_matrix(y, "y", num_labels=cert.prediction.shape[1])
    if y.shape[0] != cert.prediction.shape[0]:
        raise ValueError(f"y has {y.shape[0]} rows but the certificate covers {cert.prediction.shape[0]} images")
    r = torch.as_tensor(radii, dtype=torch.float64).flatten().cpu()
    correct = ((cert.prediction == y.to(cert.prediction.device)).all(1) & cert.certified).cpu()
    ok = correct[:, None] & (cert.set_radius.cpu()[:, None] >= r[None, :])
    return ok.double().mean(0)


def check_certificate(cert: Certificate, cert_adv: Certificate, x: torch.Tensor, x_adv: torch.Tensor) -> dict:
    """The certificate against an attack: which labels the smoothed classifier *confidently* changed at
    ``x_adv`` (``cert_adv``, the same Monte Carlo procedure at the same level, does not abstain and
    disagrees with ``cert``) and whether that happened inside the certified radius.

    ``x``, ``x_adv`` ``(N, C, H, W)``. Returns ``(N, L)`` bool ``changed``, ``inside`` (``||x_adv - x||_2 <
    radius``), ``violation`` (both), and ``(N,)`` ``l2`` and ``ratio`` (``l2`` over the smallest radius of a
    changed label; inf where none changed, NaN where that label had no radius).

    Introduced in notebooks/12_robust_training.ipynb.
    """
    if cert.prediction.shape != cert_adv.prediction.shape:
        raise ValueError("cert and cert_adv must cover the same images and labels")
    l2 = (x_adv - x).flatten(1).norm(dim=1).double().to(cert.radius.device)
    changed = ~cert_adv.abstain & (cert_adv.prediction != cert.prediction)
    inside = l2[:, None] < cert.radius  # False where the label abstained (NaN radius)
    radius_changed = torch.where(changed, cert.radius, torch.full_like(cert.radius, float("inf")))
    ratio = torch.where(changed.any(1), l2 / radius_changed.min(1).values, torch.full_like(l2, float("inf")))
    return {"changed": changed, "inside": inside, "violation": changed & inside, "l2": l2, "ratio": ratio}


class SmoothedModel(nn.Module):
    """The smoothed classifier as a differentiable model for the attacks (Salman et al., NeurIPS 2019:
    attack the soft smoothed classifier): ``forward`` ``(N, C, H, W) -> (N, L)`` logits of
    ``E_δ[sigmoid(f(x + δ))]``, the expectation over ``δ ~ N(0, σ² I)`` estimated by ``n_samples`` fresh
    draws per call (``generator``), so an attack such as ML-CW (Eq. 5) optimises through the smoothing by
    expectation over the noise. Logit ``>= 0`` means the estimated expectation is ``>= 1/2``. The
    certificate (:func:`certify`) is on the hard vote; the soft one is the attacker's surrogate for it.

    Introduced in notebooks/12_robust_training.ipynb.
    """

    def __init__(self, model: nn.Module, sigma: float, n_samples: int = 16,
                 generator: torch.Generator | None = None):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        check_positive("sigma", sigma)
        check_int("n_samples", n_samples)
        self.model, self.sigma, self.n_samples, self.generator = model, float(sigma), int(n_samples), generator
        self.train(model.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = x.unsqueeze(1).expand(-1, self.n_samples, *x.shape[1:]).reshape(-1, *x.shape[1:])
        z = self.model(xs + _noise(xs.shape, self.sigma, self.generator, xs)).view(x.shape[0], self.n_samples, -1)
        # log E[p] - log E[1 - p] from log-sigmoids: exact where float32 sigmoids saturate
        return torch.logsumexp(F.logsigmoid(z), 1) - torch.logsumexp(F.logsigmoid(-z), 1)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, n_samples={self.n_samples}"
