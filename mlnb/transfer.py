"""Black-box transfer of targeted label-set attacks: craft on a surrogate, judge on the target.

The paper leaves this to future work (Sec. V: its attacks "can also be used in black-box settings by
leveraging the transferability among models", citing Papernot et al. and Liu et al.). Here:

* :class:`EnsembleModel`: several surrogates as one model. ``mode="stack"`` (default) returns the ``K``
  models' logits side by side, ``(N, K·L)``; crafted against :func:`stack_target` (the target repeated
  ``K`` times), every attack's loss then runs over all ``K·L`` outputs: ML-CW's hinge (Eq. 5) and FGS /
  FG's cross-entropy, both sums over the labels of ``A ∪ B``, become exactly the **sum over the models** of
  each model's loss (Liu et al., ICLR 2017, ensemble the losses), and success on the ensemble means success
  on every member. Rank I / II's terms (Eq. 9, 11) take a max and a min over label sets, so on the stack
  they order the pooled scores of all members (every member's Ω- below every member's Ω+): a joint ranking
  constraint, at least as strict as the sum of the members' losses, zero only when each member's is.
  ``mode="mean"`` averages the logits instead (one ``(N, L)`` model, the logit ensemble of Dong et al.,
  CVPR 2018). An ensemble of one model is that model (``stack``: same logits; tested).
* :func:`craft`: an attack of :data:`mlnb.attacks.ATTACKS` on a surrogate (a stacked ensemble gets the
  stacked target).
* :func:`evaluate_transfer`: the adversarial images judged on a target model with
  :meth:`mlnb.target.Target.met` (full success: every label of ``A`` flipped and every label of ``B`` kept),
  the fraction of ``A`` flipped and of ``B`` damaged (Sec. IV-D's Hamming losses), and RMSD.
* :func:`transfer_attack`: both, with an optional common RMSD bound (the perturbation projected onto the
  RMSD ball, :func:`mlnb.experiment_plan.project_rmsd`) applied before judging. Transfer to the surrogate
  itself is the white-box result (tested).
* :func:`paired_claim`: one row of a claims table (the four states of :mod:`mlnb.paper.claims`), decided by
  a paired bootstrap over the images two settings share.

Batched and device-following like the attacks: the models and ``x`` share a device.

Introduced in notebooks/11_transfer.ipynb.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .attacks import ATTACKS, AttackResult
from .experiment_plan import project_rmsd
from .metrics import LOGIT_THRESHOLD, hamming_loss, rmsd
from .models import predict_logits
from .paper.claims_stats import N_BOOT, boot_means, conjunction, decide, resample_weights
from .target import Target
from .validate import check_choice, check_eval_model, check_finite, check_images, check_positive, check_same_rows

ENSEMBLE_MODES = ("stack", "mean")


class EnsembleModel(nn.Module):
    """``K`` models ``(N, C, H, W) -> (N, L)`` logits as one: ``"stack"`` -> ``(N, K·L)`` (member ``k``'s
    logits in columns ``k·L .. (k+1)·L - 1``; attack it with :func:`stack_target`), ``"mean"`` -> ``(N, L)``
    the mean of the logits. Starts in eval mode when every member is in eval mode; the members' own modes are
    left as the caller set them (a member in training mode puts the ensemble in training mode, which the attacks
    and metrics refuse).
    ``models``: a list (or ``nn.ModuleList``) of modules, or one module.

    >>> ens = EnsembleModel([surrogate_a, surrogate_b])
    >>> res = ml_cw(ens, x, stack_target(target, len(ens)))   # Eq. 5's hinge summed over both models

    Introduced in notebooks/11_transfer.ipynb.
    """

    def __init__(self, models, mode: str = "stack"):
        super().__init__()
        as_list = not isinstance(models, nn.Module) or isinstance(models, nn.ModuleList)
        models = list(models) if as_list else [models]
        if not models or not all(isinstance(m, nn.Module) for m in models):
            raise TypeError("models must be a non-empty list of torch.nn.Module (each mapping images to (N, L) "
                            f"logits), got {[type(m).__name__ for m in models]}")
        check_choice("mode", mode, ENSEMBLE_MODES)
        self.members = nn.ModuleList(models)
        self.mode = mode
        # the ensemble's own mode follows its members; the members' modes are the caller's and are left alone
        self.training = self.members.training = any(m.training for m in models)

    def __len__(self) -> int:
        return len(self.members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = [m(x) for m in self.members]
        if len({o.shape for o in out}) != 1:
            raise ValueError(f"ensemble members disagree on the logits' shape: {[tuple(o.shape) for o in out]}: "
                             f"every member must score the same L labels")
        if self.mode == "mean":
            return torch.stack(out).mean(0)
        return torch.cat(out, dim=1)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, members={len(self.members)}"


def stack_target(target: Target, k: int) -> Target:
    """The target ``(N, L)`` repeated for ``k`` stacked models, ``(N, k·L)``: ``y``, ``A`` and ``B`` tiled
    along the labels, so that ``met`` on an :class:`EnsembleModel`'s stacked logits is success on all ``k``.

    Introduced in notebooks/11_transfer.ipynb.
    """
    if not isinstance(target, Target):
        raise TypeError(f"target must be a mlnb.target.Target, got {type(target).__name__}")
    check_positive("k", k, integer=True)
    k = int(k)
    return Target(target.y.repeat(1, k), target.A.repeat(1, k), target.B.repeat(1, k), target.eligible)


def _goal_for(model: nn.Module, target: Target) -> Target:
    if isinstance(model, EnsembleModel) and model.mode == "stack":
        return stack_target(target, len(model))
    return target


def craft(attack: str, surrogate: nn.Module, x: torch.Tensor, target: Target, *, generator=None,
          progress: bool = True, **params) -> AttackResult:
    """Run ``mlnb.attacks.ATTACKS[attack]`` on ``surrogate`` (eval mode) for images ``x`` ``(N, C, H, W)``
    and ``target`` (a :class:`~mlnb.target.Target`, ``(N, L)``); a stacked :class:`EnsembleModel` is
    attacked with :func:`stack_target`, so the result's logits are ``(N, K·L)``. ``params``: the
    attack's keywords (e.g. ``preset.attack_params(attack)``).

    Introduced in notebooks/11_transfer.ipynb.
    """
    check_choice("attack", attack, ATTACKS)
    if not isinstance(target, Target):
        raise TypeError(f"target must be a mlnb.target.Target (e.g. mlnb.labels.random_case(y)), got "
                        f"{type(target).__name__}")
    return ATTACKS[attack](surrogate, x, _goal_for(surrogate, target), generator=generator, progress=progress,
                           **params)


def evaluate_transfer(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, target: Target, *,
                      batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Judge adversarial images on ``model`` (the target; eval mode, ``(N, L)`` logits, or a stacked
    :class:`EnsembleModel`, judged on every member): per image ``(N,)`` tensors

    * ``success`` bool: :meth:`~mlnb.target.Target.met` (every label of ``A`` flipped, every label of ``B``
      kept, decided on the logits at 0: the 0.5 threshold, or a :class:`mlnb.models.ThresholdedModel`'s);
    * ``flip_A``: the fraction of ``A`` flipped (``1 - Hamming(A)``, Sec. IV-D);
    * ``damage_B``: the fraction of ``B`` changed (``Hamming(B)``; NaN where ``B`` is empty);
    * ``n_satisfied``: constraints of Eq. (4) met; ``rmsd``: 0-255 scale (Sec. IV-D);

    and ``logits`` ``(N, L)`` at ``x_adv``. ``x``, ``x_adv`` ``(N, C, H, W)`` in ``[0, 1]``, on the
    model's device; scored in batches of ``batch_size``.

    Introduced in notebooks/11_transfer.ipynb.
    """
    check_eval_model(model)
    check_images(x, "x")
    check_images(x_adv, "x_adv")
    if not isinstance(target, Target):
        raise TypeError(f"target must be a mlnb.target.Target, got {type(target).__name__}")
    check_same_rows(x=x, x_adv=x_adv, y=target.y)
    if x.shape != x_adv.shape:
        raise ValueError(f"x_adv has shape {tuple(x_adv.shape)} but x has {tuple(x.shape)}: pass the adversarial "
                         f"image of each clean image")
    goal = _goal_for(model, target)
    logits = predict_logits(model, x_adv, batch_size=batch_size)
    if logits.shape != goal.y.shape:
        raise ValueError(f"the model gives logits of shape {tuple(logits.shape)} but the target has "
                         f"{tuple(goal.y.shape)}: judge on a model of the target's L labels")
    check_finite(logits, "the model's logits at x_adv")
    pred = logits >= LOGIT_THRESHOLD
    return {"success": goal.met(logits), "flip_A": 1 - hamming_loss(pred, goal.y_star, goal.A),
            "damage_B": hamming_loss(pred, goal.y_star, goal.B), "n_satisfied": goal.n_satisfied(logits),
            "rmsd": rmsd(x, x_adv), "logits": logits}


@dataclass
class TransferResult:
    """One attack crafted on a surrogate and judged on a target (all tensors on ``x``'s device).

    ``x_adv`` ``(N, C, H, W)``: the images judged (projected onto the RMSD ball where ``projected``
    ``(N,)`` is True); ``crafted``: the attack's :class:`~mlnb.attacks.AttackResult` on the surrogate
    (before any projection); ``on_surrogate`` / ``on_target``: :func:`evaluate_transfer` of ``x_adv`` on
    each (the white-box and the black-box outcome of the same images).
    """

    x_adv: torch.Tensor
    projected: torch.Tensor
    crafted: AttackResult
    on_surrogate: dict
    on_target: dict

    def summary(self) -> dict[str, float]:
        """Means over the images: ``success`` (on the target), ``flip_A``, ``damage_B`` (NaN-aware),
        ``rmsd``, ``surrogate_success`` (white-box), ``transfer_rate`` (success on the target among the
        images that succeeded on the surrogate; NaN if none did) and ``projected`` (fraction bounded)."""
        t, s = self.on_target, self.on_surrogate
        ok = s["success"]

        def mean(v):
            v = v.double()
            keep = ~torch.isnan(v)
            return float(v[keep].mean()) if bool(keep.any()) else float("nan")

        return {"success": mean(t["success"]), "flip_A": mean(t["flip_A"]), "damage_B": mean(t["damage_B"]),
                "rmsd": mean(t["rmsd"]), "surrogate_success": mean(ok),
                "transfer_rate": mean(t["success"][ok]) if bool(ok.any()) else float("nan"),
                "projected": mean(self.projected)}


def transfer_attack(attack: str, surrogate: nn.Module, target_model: nn.Module, x: torch.Tensor, target: Target, *,
                    max_rmsd: float | None = None, generator=None, progress: bool = True, eval_batch_size: int = 256,
                    **params) -> TransferResult:
    """Craft ``attack`` on ``surrogate`` (:func:`craft`), bound the perturbation to ``max_rmsd`` (0-255 scale,
    Sec. IV-D; None: unbounded) by projecting it onto the RMSD ball, and judge the images on ``surrogate``
    and on ``target_model`` (:func:`evaluate_transfer`). ``x`` ``(N, C, H, W)``; ``target`` ``(N, L)``.
    ``transfer_attack(a, m, m, ...)`` is the white-box attack on ``m``.

    >>> tr = transfer_attack("ml_cw", surrogate, model, x, target, **preset.attack_params("ml_cw"))
    >>> tr.summary()["success"]

    Introduced in notebooks/11_transfer.ipynb.
    """
    if max_rmsd is not None:
        check_positive("max_rmsd", max_rmsd)
    check_eval_model(target_model)
    # the target model must take these images and give logits for these labels: found out now, not after the attack
    if isinstance(target, Target) and isinstance(x, torch.Tensor) and len(x):
        evaluate_transfer(target_model, x[:1], x[:1], target[:1], batch_size=1)
    res = craft(attack, surrogate, x, target, generator=generator, progress=progress, **params)
    x_adv, projected = res.x_adv, torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    if max_rmsd is not None:
        x_adv, projected = project_rmsd(x, res.x_adv, float(max_rmsd))
    on_s = evaluate_transfer(surrogate, x, x_adv, target, batch_size=eval_batch_size)
    on_t = evaluate_transfer(target_model, x, x_adv, target, batch_size=eval_batch_size)
    return TransferResult(x_adv=x_adv, projected=projected, crafted=res, on_surrogate=on_s, on_target=on_t)


def paired_claim(section: str, claim: str, a, b=None, *, tests=((">", 0.0),), names=("a", "b"), key: str = "",
                 seed: int = 0, n_boot: int = N_BOOT) -> dict:
    """One claims-table row: is ``mean(a) - mean(b)`` (or ``mean(a)`` when ``b`` is None) on the side of
    every ``(op, bound)`` of ``tests``? ``a``, ``b``: per-image values ``(n,)`` on the *same* images (e.g.
    success 0/1 of two surrogates), resampled together (paired bootstrap, ``n_boot`` resamples seeded by
    ``seed`` and ``key``, :func:`mlnb.paper.claims_stats.resample_weights`). Each test is decided on the 95%
    interval (:func:`mlnb.paper.claims_stats.decide`) and the tests are combined with ``conjunction``.

    Returns ``{"section", "claim", "state", "measured", "reason"}``: ``state`` one of
    :data:`mlnb.paper.claims_stats.STATES` (``"not testable"`` with no images), ``measured`` the means with
    their intervals and the difference.

    Introduced in notebooks/11_transfer.ipynb.
    """
    cols = [np.asarray(torch.as_tensor(v).double().cpu(), float).reshape(-1) for v in ((a,) if b is None else (a, b))]
    if len({len(c) for c in cols}) != 1:
        raise ValueError(f"a and b must hold one value per image of the same images, got lengths {[len(c) for c in cols]}")
    keep = np.all([~np.isnan(c) for c in cols], axis=0)
    row = {"section": section, "claim": claim}
    if not keep.any():
        return {**row, "state": "not testable", "measured": "no images", "reason": "no image was measured"}
    X = np.stack([c[keep] for c in cols], 1)
    W = resample_weights(X.shape[0], key=key or claim, seed=seed, n_boot=n_boot)
    ests = boot_means(X, W)
    stat = ests[0] if b is None else ests[0] - ests[1]
    states = [decide(stat, op, float(bound)) for op, bound in tests]
    state = conjunction(states)
    measured = f"{names[0]} {ests[0].text()}" if b is None else \
        f"{names[0]} {ests[0].text()} vs {names[1]} {ests[1].text()}; difference {stat.text()}"
    why = {"does not hold": "the 95% interval is on the other side of ",
           "undecided": "the 95% interval straddles "}.get(state, "")
    reason = why + ", ".join(f"{op} {bound:g}" for (op, bound), s in zip(tests, states) if s == state) if why else ""
    return {**row, "state": state, "measured": measured + f" (n = {X.shape[0]})", "reason": reason}
