"""Class-style doors to the six attacks, in the idiom of torchattacks: ``atk = MLCW(model, **params)``, then
``x_adv = atk(x, target)``. Each class holds a model and its settings (their names checked when it is made,
by :func:`mlnb.attacks.check_params`) and calls the same kernel as the functional form, so
``MLCW(model, **p)(x, t)`` equals ``ml_cw(model, x, t, **p).x_adv`` exactly; :meth:`Attack.run` returns
the whole :class:`~mlnb.attacks.AttackResult` (success, scores, λ or ε, ...).

The target is the paper's (Sec. II, Eq. 4): a :class:`mlnb.target.Target` or the three masks ``y, A, B``.

Introduced in notebooks/02_baselines_fgs_fg.ipynb.
"""
from __future__ import annotations

import inspect

import torch

from .attacks import ATTACKS, AttackResult, check_params
from .validate import check_generator

__all__ = ["Attack", "FGS", "FG", "MLCW", "MLDP", "RankI", "RankII", "WRAPPERS"]

_SHAPE = """
    Shape:
        - model: ``(N, C, H, W)`` -> ``(N, L)`` logits, an ``nn.Module`` in eval mode.
        - x: ``(N, C, H, W)`` float in ``[0, 1]``.
        - target: a :class:`~mlnb.target.Target` of ``N`` images, or ``y, A, B``: ``(N, L)`` bool
          (clean labels, labels to flip, labels to keep; disjoint, ``A`` non-empty on every image).
        - output: ``(N, C, H, W)`` in ``[0, 1]``, on ``x.device`` (``atk.run`` gives the whole result).
"""


class Attack:
    """A multi-label attack of :data:`mlnb.attacks.ATTACKS` bound to a model and its settings.

    ``Attack(model, *, progress=True, generator=None, **params)``: ``params`` are the keyword arguments
    of the functional attack (``help(mlnb.attacks.<name>)``); a name it does not take raises
    ``ValueError`` here, before any work; their values are checked at the first call, by the kernel.
    ``atk(x, target)`` / ``atk(x, y, A, B)`` returns the adversarial images; ``atk.run(...)`` the
    :class:`~mlnb.attacks.AttackResult`. ``repr(atk)`` prints the attack and every setting in effect.
    The class adds no state: every call is the functional call ``mlnb.attacks.<name>(model, x, ...,
    progress=progress, generator=generator, **params)``.

    Introduced in notebooks/02_baselines_fgs_fg.ipynb.
    """

    name: str = ""  # the key of mlnb.attacks.ATTACKS this class calls

    def __init__(self, model: torch.nn.Module, *, progress: bool = True, generator: torch.Generator | None = None,
                 **params) -> None:
        if not self.name:
            raise TypeError("Attack is the base class: use one of FGS, FG, MLCW, MLDP, RankI, RankII")
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module mapping (N, C, H, W) images to (N, L) logits, got "
                            f"{type(model).__name__}: pass the network itself, e.g. {type(self).__name__}(model)")
        if not isinstance(progress, bool):
            raise TypeError(f"progress must be a bool (True shows one tqdm bar per call), got {progress!r}")
        check_generator(generator)
        check_params(self.name, params)
        self.model = model
        self.progress = progress
        self.generator = generator
        self.params = dict(params)

    # ------------------------------------------------------------------ calling
    def run(self, x: torch.Tensor, y, A: torch.Tensor | None = None, B: torch.Tensor | None = None) -> AttackResult:
        """The whole :class:`~mlnb.attacks.AttackResult` of ``mlnb.attacks.<name>`` on these images:
        ``run(x, target)`` or ``run(x, y, A, B)``."""
        return ATTACKS[self.name](self.model, x, y, A, B, generator=self.generator, progress=self.progress,
                                  **self.params)

    def __call__(self, x: torch.Tensor, y, A: torch.Tensor | None = None,
                 B: torch.Tensor | None = None) -> torch.Tensor:
        """The adversarial images ``x_adv`` ``(N, C, H, W)``: ``atk(x, target)`` or ``atk(x, y, A, B)``."""
        return self.run(x, y, A, B).x_adv

    # ------------------------------------------------------------------ settings
    @property
    def settings(self) -> dict:
        """Every tunable setting in effect: the kernel's defaults, overridden by the ``params`` given."""
        signature = inspect.signature(ATTACKS[self.name]).parameters
        defaults = {k: p.default for k, p in signature.items()
                    if p.kind is p.KEYWORD_ONLY and k not in ("generator", "progress")}
        return {**defaults, **self.params}

    def __repr__(self) -> str:
        param = next(self.model.parameters(), None)
        device = param.device if param is not None else "n/a"
        shown = ", ".join(f"{k}={v!r}" for k, v in self.settings.items())
        return (f"{type(self).__name__}(model_name={type(self.model).__name__}, device={device}, "
                f"attack={self.name}, targeted=True, progress={self.progress}, {shown})")


class FGS(Attack):
    """Targeted multi-label Fast Gradient Sign (Sec. IV-C): ``x* = clip(x - ε sign(∇_x loss))``, ``loss`` the
    sigmoid loss towards ``y* = y XOR A`` over ``A ∪ B``; ε searched per image (default) or fixed
    (``eps=``). Settings and defaults: :func:`mlnb.attacks.fgs`.
    {shape}
    Examples::
        >>> atk = FGS(model.eval(), eps_max=10 / 255, progress=False)
        >>> x_adv = atk(x, target)            # or atk(x, y, A, B)
        >>> atk.run(x, target).success        # the whole AttackResult

    Introduced in notebooks/02_baselines_fgs_fg.ipynb.
    """

    name = "fgs"


class FG(Attack):
    """Targeted multi-label Fast Gradient (Sec. IV-C): ``x* = clip(x - ε sqrt(d) ∇_x loss / ||∇_x loss||_2)``,
    ε the root-mean-square step per pixel. Settings and defaults: :func:`mlnb.attacks.fg`.
    {shape}
    Examples::
        >>> atk = FG(model.eval(), eps=4 / 255)
        >>> x_adv = atk(x, y, A, B)

    Introduced in notebooks/02_baselines_fgs_fg.ipynb.
    """

    name = "fg"


class MLCW(Attack):
    """ML-CW (Sec. III-B1, Eq. 4-5): ``min ||r||_2^2 + λ Σ_{i ∈ A∪B} max(0, y'_i F'_i(x+r) - c_i + κ)``, with a
    binary search on λ per image. Settings and defaults: :func:`mlnb.attacks.ml_cw`.
    {shape}
    Examples::
        >>> atk = MLCW(model.eval(), lambda_init=10.0, n_search=5, max_iter=100)
        >>> atk
        MLCW(model_name=SmallCNN, device=cpu, attack=ml_cw, targeted=True, ..., lambda_init=10.0, ...)
        >>> x_adv = atk(x, target)

    Introduced in notebooks/02_baselines_fgs_fg.ipynb.
    """

    name = "ml_cw"


class MLDP(Attack):
    """ML-DP, the multi-label DeepFool of Algorithm 1 (Sec. III-B2, Eq. 6-7): minimum-norm steps on the
    linearised constraints, ``form="greedy"`` (default) or ``"paper"``. Settings: :func:`mlnb.attacks.ml_dp`.
    {shape}
    Examples::
        >>> atk = MLDP(model.eval(), max_iter=20, form="paper")
        >>> x_adv = atk(x, target)

    Introduced in notebooks/02_baselines_fgs_fg.ipynb.
    """

    name = "ml_dp"


class RankI(Attack):
    """Rank I (Sec. III-C1, Eq. 9): the ranking hinges ``Ω- < Ω+``, ``Ω- < Ω◦``, ``Ω◦ < Ω+`` with the squared
    L2 distortion, binary search on λ, selection by Kendall tau-b. Settings: :func:`mlnb.attacks.rank1`.
    {shape}
    Examples::
        >>> atk = RankI(model.eval(), lambda_init=10.0, n_search=5, max_iter=100)
        >>> atk.run(x, target).kendall_tau

    Introduced in notebooks/02_baselines_fgs_fg.ipynb.
    """

    name = "rank1"


class RankII(Attack):
    """Rank II (Sec. III-C2, Eq. 10-11): Rank I plus the two constraints of Eq. (10) (newly negative labels below
    every kept negative, newly positive above every kept positive). Settings: :func:`mlnb.attacks.rank2`.
    {shape}
    Examples::
        >>> atk = RankII(model.eval(), lambda_init=10.0, n_search=5, max_iter=100)
        >>> x_adv = atk(x, y, A, B)

    Introduced in notebooks/02_baselines_fgs_fg.ipynb.
    """

    name = "rank2"


WRAPPERS: dict[str, type[Attack]] = {cls.name: cls for cls in (FGS, FG, MLCW, MLDP, RankI, RankII)}

for _cls in WRAPPERS.values():
    _cls.__doc__ = _cls.__doc__.replace("{shape}", _SHAPE)
