"""The six targeted multi-label attacks of Song et al. (ICDM 2018), one signature for all:

``mlnb.attacks.<name>(model, x, y, A, B, *, generator=None, progress=True, **params) -> AttackResult``
``mlnb.attacks.<name>(model, x, target, *, ...)`` with a :class:`mlnb.target.Target` (e.g. from a strategy)

* ``model``: an ``nn.Module`` in eval mode mapping ``(N, C, H, W)`` images in ``[0, 1]`` to ``(N, L)``
  logits (probabilities are ``sigmoid(logits)``, threshold 0.5).
* ``x`` ``(N, C, H, W)`` float in ``[0, 1]``; ``y`` ``(N, L)`` bool clean labels; ``A`` (flip) and
  ``B`` (keep) ``(N, L)`` bool, disjoint, ``A`` non-empty for every image; they are made into one
  :class:`~mlnb.target.Target`, validated once, whose :meth:`~mlnb.target.Target.met` decides success.
* common parameters: ``batch_size`` (images processed together, default all; halved automatically
  on out-of-memory), ``autocast_dtype`` (``None`` or ``torch.bfloat16`` for the model's forward),
  ``channels_last`` (feed channels-last inputs). ``generator`` is accepted for a uniform signature;
  no attack here draws random numbers (every attack starts from the clean image).

Every attack is batched (no Python loop over images), follows ``x.device``, is deterministic on
CPU, and gives each image the result it would get alone (to float rounding: batched convolutions and
vectorised exp / tanh may round the last bit differently for another batch length). Such a bit changes an
outcome only where an image ends within rounding of the threshold: ML-DP's paper form lands labels on the
threshold line by construction, so there it is common; the other attacks end past it (ML-DP's greedy form
by its overshoot), so it is rare, but it happens (one image of notebook 04's smoke run succeeds alone and
fails in its batch of 8, its x* 1.4e-5 apart). An image already in the target state is
returned unchanged at zero cost and counts as a success.

The package: one module per family, :mod:`~mlnb.attacks.fast_gradient` (FGS, FG),
:mod:`~mlnb.attacks.ml_cw`, :mod:`~mlnb.attacks.deepfool` (ML-DP), :mod:`~mlnb.attacks.rank` (Rank I, II);
their losses in :mod:`~mlnb.attacks.losses` (public); the shared optimisation driver (``_driver``, ``_state``)
and what every attack shares (``_core``: the result type, the boundary checks, chunking) are private.

Introduced in notebooks/02_baselines_fgs_fg.ipynb, 03_ml_cw.ipynb, 04_ml_deepfool.ipynb and
05_rank_attacks.ipynb.
"""
from __future__ import annotations

import inspect

from .. import validate as V
from ._core import AttackResult
from .deepfool import ML_DP_FORMS, ml_dp
from .fast_gradient import fg, fgs
from .ml_cw import HINGE_SPACES, ml_cw
from .rank import RANK_SELECT_CHOICES, rank1, rank2

__all__ = ["AttackResult", "ATTACKS", "check_params", "fgs", "fg", "ml_cw", "ml_dp", "rank1", "rank2",
           "HINGE_SPACES", "ML_DP_FORMS", "RANK_SELECT_CHOICES"]

ATTACKS = {"fgs": fgs, "fg": fg, "ml_cw": ml_cw, "ml_dp": ml_dp, "rank1": rank1, "rank2": rank2}


def check_params(attack: str, params: dict) -> None:
    """Raise before any work when ``params`` holds a keyword that is not a tunable parameter of
    ``ATTACKS[attack]`` (a typo such as ``max_iters`` would otherwise fail only after the target
    model is trained). ``generator`` and ``progress`` are set by the caller, not by ``params``."""
    V.check_choice("attack", attack, ATTACKS)
    signature = inspect.signature(ATTACKS[attack], eval_str=True).parameters
    if any(p.kind is p.VAR_KEYWORD for p in signature.values()):
        return  # a wrapper taking **kwargs: nothing to check here
    valid = [k for k, p in signature.items() if p.kind is p.KEYWORD_ONLY and k not in ("generator", "progress")]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for attack {attack!r}: valid parameters are "
                         f"{', '.join(valid)}")
    for key, value in params.items():  # the types too (the values' ranges are checked by the attack itself)
        V.check_annotated(f"{attack}.{key}", value, signature[key].annotation)

# The successors (notebook 13): MLA-LP (Zhou et al., IJCNN 2020) and TkML-AP (Hu et al., ICCV 2021). They
# take the same arguments and return the same AttackResult, but are not in ATTACKS (the paper's six).
from .mla_lp import mla_lp  # noqa: E402
from .topk import TOPK_STRATEGIES, topk_targeted, topk_targets, topk_universal, topk_untargeted  # noqa: E402
from .topk_metrics import in_topk, topk_margin, topk_report, topk_success  # noqa: E402

__all__ += ["mla_lp", "topk_untargeted", "topk_targeted", "topk_universal", "topk_targets", "TOPK_STRATEGIES",
            "in_topk", "topk_success", "topk_margin", "topk_report"]
