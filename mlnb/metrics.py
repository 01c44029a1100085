"""Evaluation metrics of Sec. IV-D (attacks) and Table III (the target model), as batched torch kernels.

Every per-image kernel takes ``(N, L)`` tensors and returns an ``(N,)`` float tensor on the inputs'
device; nothing loops over images. Ties are handled exactly with pairwise ``(N, L, L)`` comparisons
(``L`` is small) or, where ``N`` is large, with a sort and ``searchsorted``.

**Attacks are scored on logits.** :func:`per_image_metrics` and :func:`evaluate_attack` take the
model's logits at ``x_adv``: float32 probabilities saturate (``sigmoid(z)`` is exactly 1.0 past
``z`` of about 16.6), so ranking metrics on them see ties the logits do not have. The ranking
metrics (ranking loss, AP / mAP, instance AUC, Kendall τ_b) depend on the order only, which sigmoid
keeps; the paper's prediction ``h_i = [f_i >= 0.5]`` (Sec. IV-D) is ``logit >= 0`` exactly
(:func:`predict_from_logits`). The *target* labels ``y* = y XOR A`` are the ground truth. Table III
(:func:`model_quality`) keeps taking probabilities, as :func:`mlnb.models.predict_scores` gives them.

**One tie rule.** A tied (positive, negative) pair counts 1/2: 1/2 correct in the instance AUC (as
sklearn ``roc_auc_score``) and 1/2 error in the ranking loss, so ``instance_auc = 1 - ranking_loss``
on every row with a positive and a negative. sklearn ``label_ranking_loss`` counts a tie as a full
error: we differ from it on ties only, which are rare on logits. AP ranks ties pessimistically (LRAP).

Degenerate rows (documented choices; nothing ever returns Inf):

========================  =======================================  =================
kernel                    degenerate row                           value
========================  =======================================  =================
``hamming_loss``          empty mask (e.g. ``B = ∅``)              NaN ("N.A.")
``instance_f1``           no predicted and no target positive      1.0 (exact match)
``ranking_loss``          no positive or no negative in ``y*``     0.0 (as sklearn)
``ranking_loss``          constant logits (every pair tied)        0.5 (sklearn: 1.0)
``average_precision``     no positive or no negative in ``y*``     1.0 (as sklearn)
``instance_auc``          no positive or no negative in ``y*``     NaN (undefined)
``instance_auc``          constant logits (every pair tied)        0.5 (as sklearn)
``kendall_tau_b``         constant logits or constant ``y_τ``      NaN (undefined)
========================  =======================================  =================

Aggregates (:func:`evaluate_attack`) are NaN-aware means; a key whose every row is NaN is NaN.

Introduced in notebooks/00_definitions.ipynb.
"""
from __future__ import annotations

import math

import torch

from .target import LOGIT_THRESHOLD, THRESHOLD, Target
from .validate import (check_eval_model, check_finite, check_images, check_label_matrix, check_logits,
                       check_positive, check_same_rows)

METRIC_KEYS = ("rmsd", "hamming_A", "hamming_B", "f1", "ranking_loss", "map", "auc", "kendall_tau_b")  # per_image_metrics
METRIC_COLUMNS = {"rmsd": "RMSD", "hamming_A": "Hamming(A)", "hamming_B": "Hamming(B)", "f1": "F1",  # key -> the
                  "ranking_loss": "Ranking loss", "map": "mAP", "auc": "AUC", "kendall_tau_b": "Kendall tau-b"}  # paper's column


# ----------------------------------------------------------------------------- checks
def _check_scores(scores, name: str = "scores", *, probabilities: bool = False, what: str = "scores") -> None:
    """Scores: a finite float ``(N, L)`` tensor (in ``[0, 1]`` when ``probabilities``); ``what`` names
    them in the messages (``"logits"`` for the attack metrics)."""
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, L), got {type(scores).__name__}")
    if scores.dim() != 2 or not scores.is_floating_point():
        raise ValueError(f"{name} must be a float tensor (N, L), got dtype {scores.dtype} and shape "
                         f"{tuple(scores.shape)}: pass one row of label {what} per image")
    check_finite(scores, name, what)
    if probabilities and scores.numel() and (scores.min() < 0 or scores.max() > 1):
        raise ValueError(f"{name} must be probabilities in [0, 1], found values in "
                         f"[{float(scores.min()):.4g}, {float(scores.max()):.4g}]: pass torch.sigmoid(logits)")


def _check_like(t, name: str, ref: torch.Tensor, ref_name: str, *, boolean: bool = True) -> None:
    """``t`` has the shape of ``ref`` (and is a bool label matrix when ``boolean``)."""
    if boolean:
        check_label_matrix(t, name)
    elif not isinstance(t, torch.Tensor) or t.dim() != 2:
        raise ValueError(f"{name} must be a 2-D (N, L) tensor")
    if t.shape != ref.shape:
        raise ValueError(f"{name} has shape {tuple(t.shape)} but {ref_name} has {tuple(ref.shape)}: "
                         f"pass one row per image and one column per label in each")


HALF = (torch.float16, torch.bfloat16)  # their integers overflow past 65504 / round past 256: counted in float32


def _float(t: torch.Tensor, like: torch.Tensor | None = None) -> torch.Tensor:
    """Integer counts ``t`` in the dtype their ratios are taken in: that of float32/float64 ``like``, else
    float32 (half-precision scores: a row of 300 labels has 22,500 pairs, past float16's and bfloat16's integers)."""
    ok = like is not None and like.is_floating_point() and like.dtype not in HALF
    return t.to(like.dtype if ok else torch.get_default_dtype())


# ----------------------------------------------------------------------------- per-image kernels
def predict(scores: torch.Tensor, threshold: float = THRESHOLD) -> torch.Tensor:
    """Predicted labels ``h_i = [f_i >= threshold]``: ``(N, L)`` probabilities -> ``(N, L)`` bool (Sec. IV-D);
    for logits, :func:`predict_from_logits`."""
    _check_scores(scores, probabilities=True)
    return scores >= threshold


def predict_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Predicted labels from logits, ``h_i = [z_i >= 0]``: ``(N, L)`` -> ``(N, L)`` bool; equal to
    ``predict(torch.sigmoid(logits))`` (``sigmoid(z) >= 0.5`` iff ``z >= 0``) without the rounding."""
    _check_scores(logits, "logits", what="logits")
    return logits >= LOGIT_THRESHOLD


def rmsd(x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
    """Root mean square deviation on the 0-255 scale (Sec. IV-D), ``(N,)``.

    ``RMSD_n = sqrt(mean_{c,h,w} ((x_adv - x) * 255)^2)`` over all ``C*H*W`` entries of image ``n``;
    ``x``, ``x_adv``: ``(N, C, H, W)`` in ``[0, 1]``. A uniform shift of ``1/255`` gives ``1.0``.
    """
    check_images(x, "x")
    check_images(x_adv, "x_adv")
    if x.shape != x_adv.shape:
        raise ValueError(f"x_adv has shape {tuple(x_adv.shape)} but x has {tuple(x.shape)}: pass the "
                         f"adversarial image of each clean image")
    d = (x_adv - x) * 255.0
    return d.flatten(1).pow(2).mean(1).sqrt()


def hamming_loss(pred: torch.Tensor, y_star: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Fraction of the labels in ``mask`` (A or B) where ``pred != y_star``, ``(N,)`` (Sec. IV-D).

    All inputs ``(N, L)`` bool. Rows with an empty mask are NaN (the paper's "N.A.").
    """
    check_label_matrix(pred, "pred")
    _check_like(y_star, "y_star", pred, "pred")
    _check_like(mask, "mask", pred, "pred")
    n = mask.sum(1)
    wrong = ((pred ^ y_star) & mask).sum(1)
    out = _float(wrong) / _float(n.clamp(min=1))
    return torch.where(n > 0, out, torch.full_like(out, math.nan))


def instance_f1(pred: torch.Tensor, y_star: torch.Tensor) -> torch.Tensor:
    """Instance F1 ``2|h ∩ y*| / (|h| + |y*|)``, ``(N,)`` in ``[0, 1]`` (Sec. IV-D, [33]).

    ``pred``, ``y_star``: ``(N, L)`` bool. A row with no predicted and no target positive is an
    exact match and scores 1.0 (sklearn ``f1_score(average="samples", zero_division=1)``).
    """
    check_label_matrix(pred, "pred")
    _check_like(y_star, "y_star", pred, "pred")
    tp = (pred & y_star).sum(1)
    denom = pred.sum(1) + y_star.sum(1)
    out = _float(2 * tp) / _float(denom.clamp(min=1))
    return torch.where(denom > 0, out, torch.ones_like(out))


def _pairs(scores: torch.Tensor, y: torch.Tensor):
    """Positive-negative pair masks and score comparisons, each ``(N, L, L)`` indexed [pos, neg]."""
    pair = y[:, :, None] & ~y[:, None, :]
    diff = scores[:, :, None] - scores[:, None, :]
    n_pairs = y.sum(1) * (~y).sum(1)
    return pair, diff, n_pairs


def ranking_loss(scores: torch.Tensor, y_star: torch.Tensor) -> torch.Tensor:
    """Ranking loss, ``(N,)`` in ``[0, 1]``: the fraction of (positive, negative) label pairs of
    ``y_star`` ranked wrongly, ``f_pos < f_neg`` counting 1 and a tie ``f_pos = f_neg`` counting 1/2.

    The tie rule is the instance AUC's, so ``ranking_loss = 1 - instance_auc`` row by row. sklearn
    ``label_ranking_loss`` counts a tie as a full error: the two differ on tied pairs only (rare on
    logits, the scores the attack metrics use). ``scores`` ``(N, L)`` float (logits or probabilities),
    ``y_star`` ``(N, L)`` bool. Rows with no positive or no negative: 0.0 (as sklearn).
    """
    _check_scores(scores)
    _check_like(y_star, "y_star", scores, "scores")
    pair, diff, n_pairs = _pairs(scores, y_star)
    bad = _float((pair & (diff < 0)).sum((1, 2)), scores) + 0.5 * _float((pair & (diff == 0)).sum((1, 2)), scores)
    out = bad / _float(n_pairs.clamp(min=1), scores)
    return torch.where(n_pairs > 0, out, torch.zeros_like(out)).to(scores.dtype)


def _ap_rows(scores: torch.Tensor, rel: torch.Tensor) -> torch.Tensor:
    """Per-row ``mean_{j relevant} #{relevant k: s_k >= s_j} / #{k: s_k >= s_j}``, ``(R, M)`` -> ``(R,)``.

    Sort-based (``O(M log M)`` per row); rows without a relevant entry give 0.
    """
    m = scores.shape[1]
    desc, order = scores.sort(dim=1, descending=True)
    csum = rel.gather(1, order).long().cumsum(1)
    n_ge = m - torch.searchsorted(desc.flip(1).contiguous(), scores.contiguous(), right=False)
    tp_ge = csum.gather(1, n_ge - 1)
    prec = _float(tp_ge, scores) / _float(n_ge, scores)
    n_rel = rel.sum(1)
    return (prec * rel).sum(1) / _float(n_rel.clamp(min=1), scores)


def average_precision(scores: torch.Tensor, y_star: torch.Tensor) -> torch.Tensor:
    """Per-instance average precision, ``(N,)`` in ``(0, 1]``; mAP (Sec. IV-D) is its mean.

    ``AP_n = mean_{j in Y*} #{k in Y*: f_k >= f_j} / #{k: f_k >= f_j}`` (ties ranked pessimistically),
    equal to sklearn ``label_ranking_average_precision_score`` row by row. ``scores`` ``(N, L)`` float
    (logits or probabilities), ``y_star`` ``(N, L)`` bool. Rows with no positive or no negative: 1.0.
    """
    _check_scores(scores)
    _check_like(y_star, "y_star", scores, "scores")
    ap = _ap_rows(scores, y_star).to(scores.dtype)
    n_pos = y_star.sum(1)
    degenerate = (n_pos == 0) | (n_pos == y_star.shape[1])
    return torch.where(degenerate, torch.ones_like(ap), ap)


def instance_auc(scores: torch.Tensor, y_star: torch.Tensor) -> torch.Tensor:
    """Instance AUC, ``(N,)`` in ``[0, 1]``: the fraction of (positive, negative) pairs ranked
    correctly, a tie counting 1/2 (sklearn ``roc_auc_score`` on each row) (Sec. IV-D); equal to
    ``1 - ranking_loss`` on every row where it is defined. ``scores`` ``(N, L)`` float (logits or
    probabilities), ``y_star`` ``(N, L)`` bool.

    Rows with no positive or no negative label: NaN (AUC is undefined there).
    """
    _check_scores(scores)
    _check_like(y_star, "y_star", scores, "scores")
    pair, diff, n_pairs = _pairs(scores, y_star)
    good = _float((pair & (diff > 0)).sum((1, 2)), scores) + 0.5 * _float((pair & (diff == 0)).sum((1, 2)), scores)
    out = good / _float(n_pairs.clamp(min=1), scores)
    return torch.where(n_pairs > 0, out, torch.full_like(out, math.nan)).to(scores.dtype)


def kendall_tau_b(scores: torch.Tensor, y_tau: torch.Tensor) -> torch.Tensor:
    """Kendall's τ_b between the scores and the criterion ``y_τ`` (Sec. III-C2, Sec. IV-D), ``(N,)``.

    ``τ_b = (P - Q) / sqrt((n0 - n_x)(n0 - n_y))`` with the tie corrections ``n_x``, ``n_y`` (pairs
    tied in the scores / in ``y_τ``), as ``scipy.stats.kendalltau(variant="b")``. ``scores`` ``(N, L)``
    float, ``y_tau`` ``(N, L)`` integer from :func:`mlnb.labels.kendall_criterion`. In ``[-1, 1]``;
    NaN (undefined) when a row's scores or ``y_τ`` are constant.
    """
    _check_scores(scores)
    _check_like(y_tau, "y_tau", scores, "scores", boolean=False)
    if y_tau.is_floating_point() or y_tau.dtype in (torch.bool, torch.uint8):  # uint8 wraps -2 to 254
        raise ValueError(f"y_tau must be a signed integer tensor (from mlnb.labels.kendall_criterion), got {y_tau.dtype}")
    return tau_b_kernel(scores, y_tau)


def tau_b_kernel(scores: torch.Tensor, y_tau: torch.Tensor) -> torch.Tensor:
    """Unvalidated kernel of :func:`kendall_tau_b` (one implementation, two doors: validate at the
    boundary, not in the loop). ``y_tau`` may be integer, bool or float; the result has the dtype of
    ``scores`` (float32 logits are safe: only signs of differences and integer pair counts are used).
    NaN where a row of ``scores`` or ``y_tau`` is constant."""
    if scores.dtype in HALF:  # their pair counts overflow / round (L >= 17)
        return tau_b_kernel(scores.float(), y_tau).to(scores.dtype)
    return tau_b_from_parts(scores, tau_b_parts(y_tau, scores.dtype))


def tau_b_parts(y_tau: torch.Tensor, dtype: torch.dtype) -> dict:
    """What τ_b reads of the criterion ``y_tau`` ``(N, L)``, for a caller that reuses it (the attack driver
    makes it once per target and scores every step): the signs of its pair differences ``dy`` ``(N, L, L)``
    and its count of untied pairs ``ny`` ``(N,)``, both in ``dtype`` (the scores'), and ``ok``: ``ny > 0``."""
    t = y_tau if y_tau.is_floating_point() else y_tau.to(torch.int32)
    dy = torch.sign(t[:, :, None] - t[:, None, :]).to(dtype)
    ny = (dy != 0).sum((1, 2))
    return {"dy": dy, "ny": ny.to(dtype), "ok": ny > 0}


def tau_b_from_parts(scores: torch.Tensor, parts: dict) -> torch.Tensor:
    """:func:`tau_b_kernel` of float32/float64 ``scores`` on the criterion's :func:`tau_b_parts`; NaN for a row with
    a NaN score (its order is unknown; ``sign(nan)`` would count it as a tie)."""
    dx = torch.sign(scores[:, :, None] - scores[:, None, :])
    num = (dx * parts["dy"]).sum((1, 2))
    nx = (dx != 0).sum((1, 2))
    den = torch.sqrt(_float(nx, scores) * parts["ny"])
    out = (num / den.clamp(min=1)).clamp(-1.0, 1.0)
    return torch.where((nx > 0) & parts["ok"] & ~scores.isnan().any(1), out, torch.full_like(out, math.nan))


# ----------------------------------------------------------------------------- attack evaluation
def per_image_metrics(logits_adv: torch.Tensor, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor,
                      A: torch.Tensor, B: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every Sec. IV-D metric of an attack, per image: ``{key: (N,) tensor}`` for the keys
    ``rmsd, hamming_A, hamming_B, f1, ranking_loss, map, auc, kendall_tau_b``.

    ``logits_adv`` ``(N, L)``: the model's *logits* at ``x_adv`` (``AttackResult.logits``; not the
    probabilities, which round to exactly 0 or 1 and tie); ``x``, ``x_adv`` ``(N, C, H, W)`` in
    ``[0, 1]``; ``y``, ``A``, ``B`` ``(N, L)`` bool, ``A`` non-empty per row. Predictions are
    ``logit >= 0`` (probability ``>= 0.5``, exactly); the ranking metrics and Kendall τ_b (against
    ``y_τ`` of Sec. III-C2) use the logits' order. The target labels ``y* = y XOR A`` are the ground truth.
    """
    target = Target(y, A, B)
    _check_scores(logits_adv, "logits_adv", what="logits")
    _check_like(y, "y", logits_adv, "logits_adv")
    check_images(x, "x")
    check_images(x_adv, "x_adv")
    check_same_rows(x=x, x_adv=x_adv, y=y)
    y_star = target.y_star
    pred = logits_adv >= LOGIT_THRESHOLD
    return {
        "rmsd": rmsd(x, x_adv),
        "hamming_A": hamming_loss(pred, y_star, A),
        "hamming_B": hamming_loss(pred, y_star, B),
        "f1": instance_f1(pred, y_star),
        "ranking_loss": ranking_loss(logits_adv, y_star),
        "map": average_precision(logits_adv, y_star),
        "auc": instance_auc(logits_adv, y_star),
        "kendall_tau_b": kendall_tau_b(logits_adv, target.y_tau),
    }


def _nanmean(v: torch.Tensor) -> float:
    """Mean over the non-NaN entries; NaN when there is none."""
    keep = ~torch.isnan(v)
    return float(v[keep].double().mean())  # the mean of no entries is NaN


def _model_logits(model: torch.nn.Module, x: torch.Tensor, num_labels: int, batch_size: int) -> torch.Tensor:
    """``model(x)`` in batches under ``no_grad``, ``(N, num_labels)`` logits."""
    check_eval_model(model)
    check_images(x, "x_adv")
    check_positive("batch_size", batch_size, integer=True)
    with torch.no_grad():
        out = []
        for i in range(0, x.shape[0], int(batch_size)):
            chunk = x[i:i + int(batch_size)]
            logits = model(chunk)
            check_logits(logits, chunk.shape[0], num_labels)
            out.append(logits)
    return torch.cat(out)


def evaluate_attack(model_or_logits, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor,
                    A: torch.Tensor, B: torch.Tensor, *, batch_size: int = 256) -> dict[str, float]:
    """Mean Sec. IV-D metrics of an attack (Tables IV-V): ``{key: float}`` for the keys of
    :func:`per_image_metrics`, NaN-aware (``hamming_B`` is NaN when every ``B`` is empty, "N.A.").

    ``model_or_logits``: an ``nn.Module`` in eval mode mapping images to ``(N, L)`` logits (scored as
    ``model(x_adv)`` in batches of ``batch_size``), or the ``(N, L)`` logits at ``x_adv``
    (``AttackResult.logits``).
    """
    if isinstance(model_or_logits, torch.nn.Module):
        check_label_matrix(y, "y")
        logits = _model_logits(model_or_logits, x_adv, y.shape[1], batch_size)
    else:
        logits = model_or_logits
    per = per_image_metrics(logits, x, x_adv, y, A, B)
    return {k: _nanmean(v) for k, v in per.items()}


# ----------------------------------------------------------------------------- Table III
def model_quality(scores: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Quality of the target model on clean images (Table III), as floats.

    ``scores`` ``(N, L)`` probabilities (:func:`mlnb.models.predict_scores`), ``y`` ``(N, L)`` bool.
    Unlike the attack metrics this keeps probabilities: clean images of a model trained on them tie
    only where a negative label is as saturated as a positive one, and such a tie counts 1/2 in the
    ranking loss (the module's tie rule). Keys: ``hamming`` (Hamming loss over all
    labels), ``macro_f1`` / ``micro_f1`` (sklearn ``f1_score`` semantics, ``zero_division=0``),
    ``ranking_loss`` (mean), ``map`` (mean per-instance AP, the paper's mAP) and ``label_map`` (VOC-style
    mean over labels of per-label AP = sklearn ``average_precision_score(average="macro")``; a label
    without positive images scores 0 there, as in sklearn).
    """
    _check_scores(scores, probabilities=True)
    _check_like(y, "y", scores, "scores")
    if scores.shape[0] == 0:
        raise ValueError("scores is empty: pass at least one image")
    pred = scores >= THRESHOLD
    tp = (pred & y).sum(0).double()
    fp = (pred & ~y).sum(0).double()
    fn = (~pred & y).sum(0).double()
    per_label = 2 * tp / (2 * tp + fp + fn).clamp(min=1)  # counts: a zero denominator means tp = 0, F1 0
    denom = float(2 * tp.sum() + fp.sum() + fn.sum())
    label_ap = _ap_rows(scores.t().contiguous(), y.t().contiguous())
    return {
        "hamming": float((pred ^ y).double().mean()),
        "macro_f1": float(per_label.mean()),
        "micro_f1": float(2 * tp.sum()) / max(denom, 1.0),  # denom 0 means tp = 0
        "ranking_loss": _nanmean(ranking_loss(scores, y)),
        "map": _nanmean(average_precision(scores, y)),
        "label_map": float(label_ap.double().mean()),
    }
