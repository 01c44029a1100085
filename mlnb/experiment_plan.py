"""The seeded plan of the experiment runner (Sec. IV-E): which images are attacked with which targets,
in which chunks, with which parameters, and what a run key holds. Everything here is a pure function of
the seed, the preset and the row, so that every row and every process follows the same plan.

Introduced in notebooks/06_general_attacks.ipynb.
"""
from __future__ import annotations

import hashlib
import warnings

import torch

from .labels import make_target
from .presets import PAPER_FORMS, ROW_NAMES, Preset, row_attack
from .target import LOGIT_THRESHOLD
from .validate import check_choice, check_positive, check_seed

GENERAL = ("random", "extreme")
LABEL_SPECIFIED = ("reduce", "augment")
METRICS_VERSION = "logits-halfties"  # in the run key: records scored on probabilities are not reused
NOT_IN_RUN_KEY = ("batch_size", "trace")  # attack parameters that change how, not what, is computed

def derive_seed(*parts) -> int:
    """A 62-bit seed from any printable parts (stable across processes and platforms)."""
    return int(hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:15], 16)


def seeded_generator(*parts) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with :func:`derive_seed` of ``parts``."""
    return torch.Generator().manual_seed(derive_seed(*parts))


# ----------------------------------------------------------------------------- attack set and targets
SCORE_BATCH = 64  # images per forward when the runner scores the test set for X: fixed, so X never depends on --batch-size


def attack_set(*, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sec. IV-E: indices ``(M,)`` of the images whose every label is classified correctly at the 0.5 threshold,
    decided on the logits (``(logits >= 0) == y`` on all ``L`` labels; a float32 probability rounds to 0.5 for
    logits within 3e-8 of 0). ``logits`` ``(N, L)``, ``y`` ``(N, L)`` bool. Keyword-only: it took probabilities
    before, and a positional call with them would now select nothing, silently."""
    return ((logits >= LOGIT_THRESHOLD) == y).all(1).nonzero().flatten()


def draw_targets(y: torch.Tensor, candidates: torch.Tensor, strategy: str, n: int, *, seed: int,
                 dataset: str = "", label=None, names=None):
    """Draw ``n`` images of ``candidates`` (indices into ``y``) eligible for ``strategy``, and their targets.

    Returns ``(idx (n',), target, n_eligible)``: ``idx`` sorted ascending, ``target`` the
    :class:`~mlnb.target.Target` of those images (``n'`` rows), and
    ``n' = min(n, n_eligible)``. The draw (a permutation of the eligible images, first ``n`` kept) and
    the random-case labels come from generators seeded by ``(seed, dataset, strategy)`` only.
    """
    yc = y[candidates]
    target = make_target(strategy, yc, label=label, names=names, generator=seeded_generator(seed, dataset, strategy, "target"))
    eligible = target.eligible.nonzero().flatten()
    perm = torch.randperm(len(eligible), generator=seeded_generator(seed, dataset, strategy, "draw"))
    pick = eligible[perm[:n]].sort().values
    return candidates[pick], target[pick], int(len(eligible))


def project_rmsd(x: torch.Tensor, x_adv: torch.Tensor, max_rmsd: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Project each perturbation onto the RMSD ball of radius ``max_rmsd`` (0-255 scale, Sec. IV-D).

    ``x``, ``x_adv`` ``(N, C, H, W)`` in ``[0, 1]``. Returns ``(x_proj (N, C, H, W), projected (N,) bool)``;
    ``r <- r * min(1, max_rmsd / RMSD(r))``, unchanged where the bound already holds.
    """
    r = x_adv - x
    rmsd = (r * 255.0).flatten(1).pow(2).mean(1).sqrt()
    projected = rmsd > max_rmsd
    scale = torch.where(projected, max_rmsd / rmsd.clamp(min=1e-12), torch.ones_like(rmsd))
    return (x + r * scale.view(-1, 1, 1, 1)).clamp(0.0, 1.0), projected


def row_params(preset: Preset, row: str, params: dict | None = None) -> dict:
    """The resolved keyword arguments of a table row: the preset's for its attack, then the paper form
    (:data:`mlnb.presets.PAPER_FORMS`), then ``params[row]`` (``params`` is keyed by row name)."""
    return {**preset.attack_params(row_attack(row)), **PAPER_FORMS.get(row, {}), **(params or {}).get(row, {})}


def resolve_params(preset: Preset, rows: list[str], params: dict) -> dict:
    """``{row: resolved keyword arguments}`` for the table ``rows`` (:func:`row_params`), after checking every
    row run and every row of ``params`` (``{row: {keyword: value}}``), the preset's own keywords included: a
    misspelt row or keyword fails now, not after the target model is trained, and parameters of a row that is
    not run are named in a warning (they reach no other row)."""
    from .attacks import check_params

    for row in params:
        check_choice("attack in params", row, ROW_NAMES)
    resolved = {row: row_params(preset, row, params) for row in dict.fromkeys([*rows, *params])}
    for row, p in resolved.items():
        check_params(row_attack(row), p)
    idle = sorted(set(params) - set(rows))
    if idle:
        warnings.warn(f"parameters given for rows that are not run, {idle}: they apply to their row only (run it "
                      f"with --attacks / attacks=, or drop them)", stacklevel=3)
    return {row: resolved[row] for row in rows}


def is_scenario_row(p: dict) -> bool:
    """Must a row with resolved params ``p`` see a whole scenario in one call? Yes when it picks one ε
    for all images of a call (``eps="scenario"``), and for ML-DP's paper form, which drives every label
    onto the 0.5 line where float32 rounding (different for different batch sizes) decides each
    constraint: attacking the scenario in one call keeps its table independent of the runner's batch size."""
    return (isinstance(p.get("eps"), str) and p["eps"] == "scenario") or p.get("form") == "paper"


def plan_chunks(n_images: int, batch_size: int, scenario: bool) -> list[list[int]]:
    """Positions ``0..n_images-1`` in chunks of ``batch_size``; a single chunk for a scenario row."""
    if scenario:
        return [list(range(n_images))] if n_images else []
    return [list(range(i, min(i + batch_size, n_images))) for i in range(0, n_images, batch_size)]


def run_params(preset: Preset, row: str, p: dict, **fields) -> dict:
    """What a run key hashes: everything that changes a row's per-image results (``fields``: seed, n,
    max_rmsd, label). How many images are attacked together is left out, the runner's ``batch_size`` and
    the attack's own ``batch_size`` and ``trace`` parameters (no attack draws random numbers or mixes
    images: chunks change no formula, only the last bits of the model's convolutions, which an attack can
    carry into another outcome; README, resume), except for a scenario-ε row, attacked in one call:
    ``"scenario"``."""
    p = {k: v for k, v in p.items() if k not in NOT_IN_RUN_KEY}
    key = {"attack": row, "function": row_attack(row), "params": p, "n_test": preset.n_test,
           "image_size": preset.image_size, "metrics": METRICS_VERSION, **fields}
    if is_scenario_row(p):
        key["batch_size"] = "scenario"
    return key


def check_counts(strategies: list[str], n, seed) -> None:
    """The runner's image counts (``n``: an int, a ``{strategy: int}`` dict or None for the preset's) are
    positive whole numbers, and ``seed`` is a non-negative int, before any work."""
    check_seed(seed)
    for strategy in strategies:
        n_s = n.get(strategy) if isinstance(n, dict) else n
        try:
            if n_s is not None:
                check_positive(f"n (images of strategy {strategy!r})", n_s, integer=True)
        except (TypeError, ValueError) as err:
            raise type(err)(f"{err} (--n-images on the command line)") from None


def split_names(value, valid, what: str) -> list[str]:
    """Names given as a list or a comma-separated string (``"ml_cw, rank2"``), each checked against ``valid``."""
    items = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
    items = [v for v in items if v != ""]  # "" or "ml_cw," name no row there
    if not items:
        raise ValueError(f"no {what} given: choose from {', '.join(valid)}")
    for v in items:
        check_choice(what, v, valid)
    twice = sorted({v for v in items if items.count(v) > 1})
    if twice:
        raise ValueError(f"{what} {twice} listed more than once: name each {what} once")
    return items
