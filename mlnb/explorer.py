"""An interactive explorer of targeted multi-label attacks: pick an image, tick labels for A and B,
pick an attack and its budget, run, and look at the scores, the adversarial image and ``|r|``.

The handlers are plain functions of an :class:`ExplorerState` (testable without a browser):
:func:`make_state`, :func:`select_image`, :func:`toggle_label`, :func:`set_attack`,
:func:`default_selection`, :func:`run_attack`, :func:`render`, :func:`render_png`.
``mlnb.explorer_app.build_app`` is the thin ipywidgets layer that calls them. Label sets follow
Sec. II of the paper: ``A`` (flip), ``B`` (keep), ``C`` (the rest, unconstrained); ``A`` and ``B``
stay disjoint.

Introduced in notebooks/10_explorer.ipynb.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from .case_study import case_study_sets
from .metrics import rmsd
from .presets import ATTACK_NAMES
from .target import Target
from .validate import (check_choice, check_eval_model, check_images, check_label_index, check_label_matrix,
                       check_positive, check_same_rows)

SETS = ("A", "B", "C")
EPS_ATTACKS = ("fgs", "fg")  # budget = largest ε on the 0-255 scale; the others: iterations
BUDGET_LIMITS = {"eps": (1, 32), "iter": (1, 300)}


@dataclass
class ExplorerResult:
    """One attack on one image: ``x``, ``x_adv`` ``(C, H, W)``; ``before``, ``after`` ``(L,)``
    probabilities; ``A``, ``B`` label indices; the attack's success flag, constraints satisfied,
    RMSD (0-255 scale), name and keyword arguments.

    Introduced in notebooks/10_explorer.ipynb.
    """

    x: torch.Tensor
    x_adv: torch.Tensor
    before: torch.Tensor
    after: torch.Tensor
    A: tuple[int, ...]
    B: tuple[int, ...]
    success: bool
    n_satisfied: int
    rmsd: float
    attack: str
    params: dict


@dataclass
class ExplorerState:
    """What the explorer shows: the model, the images ``x`` ``(N, C, H, W)``, labels ``y`` ``(N, L)``
    bool, their clean probabilities ``scores`` ``(N, L)``, the chosen image, the sets ``A`` / ``B``
    (label indices), the attack, its budget and base keyword arguments, and the last result.

    Introduced in notebooks/10_explorer.ipynb.
    """

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    label_names: tuple[str, ...]
    scores: torch.Tensor
    attack_params: dict = field(default_factory=dict)
    index: int = 0
    A: set = field(default_factory=set)
    B: set = field(default_factory=set)
    attack: str = "ml_cw"
    budget: int = 50
    seed: int = 0
    result: ExplorerResult | None = None

    def roles(self) -> list[str]:
        """``"A"``, ``"B"`` or ``"C"`` for every label."""
        return ["A" if j in self.A else "B" if j in self.B else "C" for j in range(len(self.label_names))]


def budget_range(attack: str) -> tuple[int, int]:
    """The budget slider's ``(min, max)`` for ``attack`` (:data:`BUDGET_LIMITS`): ε x 255 for FGS / FG,
    iterations for the others."""
    return BUDGET_LIMITS["eps" if attack in EPS_ATTACKS else "iter"]


def clamp_budget(attack: str, budget: int) -> int:
    """``budget`` moved into :func:`budget_range` (what the slider can show is what runs)."""
    lo, hi = budget_range(attack)
    return min(max(int(budget), lo), hi)


def default_budget(attack: str, params: Mapping | None = None) -> int:
    """The budget slider's start value: ``eps_max`` x 255 for FGS / FG, else ``max_iter``, moved into the
    slider's range (:func:`clamp_budget`: a preset's ``max_iter=500`` starts the slider at 300).

    Introduced in notebooks/10_explorer.ipynb.
    """
    params = dict(params or {})
    if attack in EPS_ATTACKS:
        return clamp_budget(attack, round(float(params.get("eps_max", 10 / 255)) * 255))
    return clamp_budget(attack, params.get("max_iter", 50))


def budget_params(attack: str, budget: int, base: Mapping | None = None) -> dict:
    """Keyword arguments of ``attack`` with the budget applied: FGS / FG ``eps_max = budget / 255``,
    the others ``max_iter = budget`` (on top of ``base``, e.g. the preset's ``attack_params``).

    Introduced in notebooks/10_explorer.ipynb.
    """
    check_choice("attack", attack, ATTACK_NAMES)
    check_positive("budget", budget, integer=True)
    params = dict(base or {})
    if attack in EPS_ATTACKS:
        params["eps_max"] = float(budget) / 255
    else:
        params["max_iter"] = int(budget)
    return params


def make_state(model: nn.Module, x: torch.Tensor, y: torch.Tensor, label_names: Sequence[str], *,
               attack_params: Mapping[str, Mapping] | None = None, attack: str = "ml_cw",
               seed: int = 0) -> ExplorerState:
    """Build the explorer's state. ``model``: eval-mode ``nn.Module`` mapping ``(N, C, H, W)``
    images in ``[0, 1]`` to ``(N, L)`` logits; ``x``, ``y``: the images offered and their labels;
    ``attack_params``: ``{attack: kwargs}`` (e.g. from ``preset.attack_params``). The clean scores
    are computed once here.

    Introduced in notebooks/10_explorer.ipynb.
    """
    check_eval_model(model)
    check_images(x)
    check_label_matrix(y, "y")
    check_same_rows(x=x, y=y)
    names = tuple(str(n) for n in label_names)
    if len(names) != y.shape[1]:
        raise ValueError(f"label_names has {len(names)} names but y has {y.shape[1]} labels: pass one name per label")
    check_choice("attack", attack, ATTACK_NAMES)
    with torch.no_grad():
        scores = torch.sigmoid(model(x))
    params = {k: dict(v) for k, v in (attack_params or {}).items()}
    return ExplorerState(model=model, x=x, y=y, label_names=names, scores=scores, attack_params=params,
                         attack=attack, budget=default_budget(attack, params.get(attack)), seed=seed)


def select_image(state: ExplorerState, index: int) -> ExplorerState:
    """Show image ``index``; clears ``A``, ``B`` and the last result (labels differ per image).

    Introduced in notebooks/10_explorer.ipynb.
    """
    n = state.x.shape[0]
    if isinstance(index, bool) or not isinstance(index, numbers.Integral) or not 0 <= index < n:
        raise ValueError(f"image index must be an int in 0..{n - 1}, got {index!r}")
    state.index = int(index)
    state.A.clear()
    state.B.clear()
    state.result = None
    return state


def toggle_label(state: ExplorerState, label: int | str, set_name: str) -> ExplorerState:
    """Put ``label`` (index or name) into ``set_name`` (``"A"``, ``"B"`` or ``"C"`` = neither),
    removing it from the other set, so ``A`` and ``B`` stay disjoint. Toggling a label into the
    set it is already in moves it back to ``C`` (a second click on a checkbox).

    Introduced in notebooks/10_explorer.ipynb.
    """
    check_choice("set_name", set_name, SETS)
    j = check_label_index(label, len(state.label_names), state.label_names)
    current = "A" if j in state.A else "B" if j in state.B else "C"
    state.A.discard(j)
    state.B.discard(j)
    if set_name != current and set_name != "C":
        (state.A if set_name == "A" else state.B).add(j)
    state.result = None
    return state


def set_attack(state: ExplorerState, attack: str, budget: int | None = None) -> ExplorerState:
    """Choose the attack (one of ``mlnb.presets.ATTACK_NAMES``) and its budget (``None``: the
    attack's default from ``state.attack_params``).

    Introduced in notebooks/10_explorer.ipynb.
    """
    check_choice("attack", attack, ATTACK_NAMES)
    if budget is None:
        budget = default_budget(attack, state.attack_params.get(attack))
    check_positive("budget", budget, integer=True)
    state.attack, state.budget, state.result = attack, int(budget), None
    return state


def default_selection(state: ExplorerState, prefer_a: Sequence[str] = (), prefer_b: Sequence[str] = ()) -> ExplorerState:
    """Tick the case-study target (:func:`mlnb.case_study.case_study_sets`) for the current image.

    Introduced in notebooks/10_explorer.ipynb.
    """
    a, b = case_study_sets(state.y[state.index], state.scores[state.index], state.label_names, prefer_a, prefer_b)
    state.A.clear()
    state.B.clear()
    for j in a:
        toggle_label(state, j, "A")
    for j in b:
        toggle_label(state, j, "B")
    return state


def selected_target(state: ExplorerState) -> Target:
    """The current image's :class:`~mlnb.target.Target` (one row): its labels and the ticked ``A`` / ``B``.

    Introduced in notebooks/10_explorer.ipynb.
    """
    if not state.A:
        raise ValueError("A is empty: tick at least one label to flip (the paper requires A != {})")
    L = len(state.label_names)
    A = torch.zeros(1, L, dtype=torch.bool, device=state.y.device)
    B = torch.zeros_like(A)
    A[0, sorted(state.A)] = True
    B[0, sorted(state.B)] = True
    return Target(state.y[state.index:state.index + 1], A, B)


def run_attack(state: ExplorerState, attacks: Mapping[str, Callable] | None = None) -> ExplorerResult:
    """Run the chosen attack on the current image with the current ``A`` / ``B`` and budget; stores
    and returns an :class:`ExplorerResult`. ``attacks``: name -> attack (default ``mlnb.attacks.ATTACKS``).

    Introduced in notebooks/10_explorer.ipynb.
    """
    target = selected_target(state)
    if attacks is None:
        from .attacks import ATTACKS as attacks
    i = state.index
    x = state.x[i:i + 1]
    params = budget_params(state.attack, state.budget, state.attack_params.get(state.attack))
    gen = torch.Generator().manual_seed(state.seed)
    res = attacks[state.attack](state.model, x, target.y, target.A, target.B, generator=gen, progress=False, **params)
    state.result = ExplorerResult(
        x=x[0], x_adv=res.x_adv[0].detach(), before=state.scores[i], after=res.scores[0].detach(),
        A=tuple(sorted(state.A)), B=tuple(sorted(state.B)), success=bool(res.success[0]),
        n_satisfied=int(res.n_satisfied[0]), rmsd=float(rmsd(x, res.x_adv)[0]), attack=state.attack,
        params=params)
    return state.result


def describe(state: ExplorerState, result: ExplorerResult | None = None) -> str:
    """One line on the selection and, if given, the outcome (plain text, for the status bar).

    Introduced in notebooks/10_explorer.ipynb.
    """
    n = state.label_names
    text = (f"image {state.index}: A = {{{', '.join(n[j] for j in sorted(state.A))}}}, "
            f"B = {{{', '.join(n[j] for j in sorted(state.B))}}}, attack {state.attack}, budget {state.budget}")
    if result is not None:
        text += (f" -> {'success' if result.success else 'failure'}, {result.n_satisfied}/"
                 f"{len(result.A) + len(result.B)} constraints, RMSD {result.rmsd:.2f}")
    return text


def render(state: ExplorerState, result: ExplorerResult | None = None, fig=None):
    """The explorer's figure (``mlnb.plots.explorer_view``) for the current image and ``result``;
    ``fig``: a ``matplotlib.figure.Figure`` to draw into (default: a new pyplot figure).

    Introduced in notebooks/10_explorer.ipynb.
    """
    from .plots import explorer_view

    i = state.index
    return explorer_view(state.x[i], None if result is None else result.x_adv, state.label_names,
                         state.scores[i], None if result is None else result.after, state.roles(),
                         title=describe(state, result), fig=fig)


def render_png(state: ExplorerState, result: ExplorerResult | None = None,
               dpi: int = 90) -> tuple[bytes, tuple[int, int]]:
    """:func:`render` as PNG bytes and their ``(width, height)`` in pixels, for the app.

    The figure is always the same size, before a run and after (no tight bounding box, which
    would crop the empty panels of the first figure to another size). It is a plain
    ``matplotlib.figure.Figure``, never registered with pyplot: JupyterLab handles widget events
    in threads of their own (kernel subshells), and after each event the inline backend displays
    every open pyplot figure, so a pyplot figure half-drawn by one event's handler was shown, in
    JupyterLab's log, after another's.

    Introduced in notebooks/10_explorer.ipynb.
    """
    import io

    from matplotlib.figure import Figure

    check_positive("dpi", dpi, integer=True)
    fig = render(state, result, fig=Figure())
    w, h = (int(round(v * dpi)) for v in fig.get_size_inches())
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue(), (w, h)
