"""Property-based tests (hypothesis) and numerical-safety checks on a tiny model.

The model is a fixed random 1-conv network on ``(N, 1, 4, 4)`` images with ``L`` outputs
(``L`` in 2..12); a ``scale`` multiplies its logits, so ``scale = 1e4`` gives probabilities of
exactly 0 or 1 in float32 (saturated scores). Budgets are tiny (``max_iter <= 5``,
``n_search <= 2``) so the whole file runs in well under a minute on two cores.

Properties checked for every attack, over random label sets, batch sizes, label counts and
parameter values:

* no exception for valid inputs;
* ``x_adv`` finite and in ``[0, 1]``; ``scores`` finite probabilities;
* ``success`` ⟺ every label of ``A`` flipped and every label of ``B`` kept at 0.5, recomputed
  independently: the test runs the model on ``x_adv`` itself (``logit >= 0`` is positive), never from
  the attack's own ``scores`` / ``logits``; ``n_satisfied <= |A| + |B|``;
* ``evaluate_attack`` / ``per_image_metrics`` (on the logits) within their ranges (NaN only where documented).

The checks are not vacuous: on the unsaturated tiny model with a moderate budget the attacks really
produce adversarial examples (``test_attacks_really_attack_the_tiny_model``).

And for the label-set generators and the metrics on their own: Table I partitions the labels,
the Kendall criterion matches the cells, every metric stays in its range.
"""
from __future__ import annotations

import functools
import math
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from mlnb import attacks, labels as lb, metrics

pytestmark = pytest.mark.unit

# Derandomized by default so the test command is deterministic; MLNB_HYPOTHESIS=explore draws fresh
# random examples (and 5x as many) for a longer hunt.
EXPLORE = os.environ.get("MLNB_HYPOTHESIS") == "explore"
SETTINGS = dict(deadline=None, derandomize=not EXPLORE, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def examples(n: int) -> int:
    return 5 * n if EXPLORE else n
NAMES = tuple(attacks.ATTACKS)


class Tiny(torch.nn.Module):
    """``(N, 1, 4, 4) -> (N, L)``: one fixed random 4x4 convolution, logits times ``scale``."""

    def __init__(self, num_labels: int, scale: float = 1.0):
        super().__init__()
        g = torch.Generator().manual_seed(100 + num_labels)
        self.conv = torch.nn.Conv2d(1, num_labels, 4)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 2)
            self.conv.bias.copy_(torch.randn(num_labels, generator=g) * 0.5 - 0.5)
        self.scale = scale

    def forward(self, x):
        return self.conv(x).flatten(1) * self.scale


@functools.lru_cache(maxsize=None)
def tiny(num_labels: int, scale: float = 1.0) -> Tiny:
    return Tiny(num_labels, scale).eval()


# ----------------------------------------------------------------------------- hypothesis strategies
@st.composite
def problems(draw, max_n: int = 4):
    """``(L, scale, x, y, A, B)``: random images (some black / white), labels and a valid target."""
    L = draw(st.integers(2, 12))
    n = draw(st.integers(1, max_n))
    scale = draw(st.sampled_from([1.0, 1.0, 30.0, 1e4]))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    kind = draw(st.sampled_from(["random", "random", "black", "white", "binary"]))
    if kind == "random":
        x = torch.rand(n, 1, 4, 4, generator=g)
    elif kind == "black":
        x = torch.zeros(n, 1, 4, 4)
    elif kind == "white":
        x = torch.ones(n, 1, 4, 4)
    else:
        x = (torch.rand(n, 1, 4, 4, generator=g) < 0.5).float()
    use_model_labels = draw(st.booleans())
    if use_model_labels:  # labels = the model's predictions (the runner's attack set X)
        with torch.no_grad():
            y = tiny(L, scale)(x) >= 0
    else:
        y = torch.rand(n, L, generator=g) < draw(st.floats(0.0, 1.0))
    role = torch.randint(0, 3, (n, L), generator=g)  # 0: A, 1: B, 2: C
    first = torch.randint(0, L, (n,), generator=g)
    role[torch.arange(n), first] = 0  # A non-empty on every row
    A, B = role == 0, role == 1
    return L, scale, x, y, A, B


def attack_params(name: str):
    """Tiny-budget parameter values for ``name``."""
    pos = st.floats(1e-3, 1.0)
    if name in ("fgs", "fg"):
        return st.fixed_dictionaries({"eps_max": pos, "n_eps": st.integers(2, 3)})
    if name == "ml_dp":
        return st.fixed_dictionaries({"max_iter": st.integers(1, 5), "overshoot": st.floats(0.0, 0.1)})
    common = {"lambda_init": st.floats(1e-2, 1e3), "n_search": st.integers(1, 2), "max_iter": st.integers(1, 5),
              "lr": st.floats(1e-3, 0.5), "check_every": st.integers(1, 3)}
    if name == "ml_cw":
        return st.fixed_dictionaries(common)
    return st.fixed_dictionaries({**common, "omega_zero": st.sampled_from(lb.OMEGA_ZERO_CHOICES),
                                  "pairwise": st.booleans(), "select": st.sampled_from(["tau", "constraints"])})


# ----------------------------------------------------------------------------- invariants
def check_result(res, model, x, y, A, B) -> None:
    n, L = y.shape
    assert res.x_adv.shape == x.shape and res.scores.shape == (n, L)
    assert torch.isfinite(res.x_adv).all() and res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    assert torch.isfinite(res.scores).all() and res.scores.min() >= 0 and res.scores.max() <= 1
    with torch.no_grad():  # the model at x_adv, evaluated here: never the attack's own fields
        z = model(res.x_adv)
    assert torch.allclose(res.logits, z, rtol=1e-6, atol=1e-5), "logits are not the model's at x_adv"
    assert torch.allclose(res.scores, torch.sigmoid(z), atol=1e-6), "scores are not the model's at x_adv"
    target, ab = y ^ A, A | B
    met = ((z >= 0) == target) | ~ab
    assert torch.equal(res.success, met.all(1)), "success disagrees with the model at x_adv"
    assert (res.n_satisfied <= ab.sum(1)).all() and (res.n_satisfied >= 0).all()
    assert torch.equal(res.n_satisfied, (met & ab).sum(1))
    assert (res.iterations >= 0).all()
    tau = res.kendall_tau
    assert (torch.isnan(tau) | ((tau >= -1) & (tau <= 1))).all()
    assert torch.isfinite(res.extras["l2"]).all()
    assert torch.allclose(res.extras["l2"], (res.x_adv - x).flatten(1).norm(dim=1), atol=1e-5)


RANGES = {"rmsd": (0.0, 255.0), "hamming_A": (0.0, 1.0), "hamming_B": (0.0, 1.0), "f1": (0.0, 1.0),
          "ranking_loss": (0.0, 1.0), "map": (0.0, 1.0), "auc": (0.0, 1.0), "kendall_tau_b": (-1.0, 1.0)}
NAN_OK = {"hamming_B", "auc", "kendall_tau_b"}  # undefined rows, documented in mlnb.metrics


def check_metrics(values: dict, B: torch.Tensor | None = None) -> None:
    assert set(values) == set(metrics.METRIC_KEYS)
    for k, v in values.items():
        v = torch.as_tensor(v, dtype=torch.float64)
        nan = torch.isnan(v)
        if k not in NAN_OK:
            assert not nan.any(), f"{k} is NaN"
        assert not torch.isinf(v).any(), f"{k} is infinite"
        lo, hi = RANGES[k]
        assert ((v[~nan] >= lo - 1e-6) & (v[~nan] <= hi + 1e-6)).all(), f"{k} out of [{lo}, {hi}]: {v}"
    if B is not None and B.dim() == 2:
        hb = torch.as_tensor(values["hamming_B"])
        assert torch.equal(torch.isnan(hb), ~B.any(1)), "hamming_B is NaN exactly where B is empty"


def _attack_property(name):
    @settings(max_examples=examples(12), **SETTINGS)
    @given(problem=problems(), params=attack_params(name))
    def test(problem, params):
        L, scale, x, y, A, B = problem
        model = tiny(L, scale)
        res = attacks.ATTACKS[name](model, x, y, A, B, progress=False, **params)
        check_result(res, model, x, y, A, B)
        check_metrics(metrics.per_image_metrics(res.logits, x, res.x_adv, y, A, B), B)
        check_metrics(metrics.evaluate_attack(model, x, res.x_adv, y, A, B))

    test.__name__ = f"test_{name}_properties"
    return test


for _name in NAMES:
    globals()[f"test_{_name}_properties"] = _attack_property(_name)


# ----------------------------------------------------------------------------- numerical safety (fixed cases)
FAST = {"fgs": {"n_eps": 3}, "fg": {"n_eps": 3}, "ml_dp": {"max_iter": 5},
        "ml_cw": {"lambda_init": 10.0, "n_search": 2, "max_iter": 5},
        "rank1": {"lambda_init": 10.0, "n_search": 2, "max_iter": 5},
        "rank2": {"lambda_init": 10.0, "n_search": 2, "max_iter": 5}}
IMAGES = {"black": torch.zeros(3, 1, 4, 4), "white": torch.ones(3, 1, 4, 4),
          "random": torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(3))}


def _target(L: int = 5):
    A = torch.zeros(3, L, dtype=torch.bool)
    A[0, 0] = A[1, 1:3] = A[2] = True
    B = ~A
    B[2] = False
    return A, B


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("image", sorted(IMAGES))
@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_extreme_images_and_saturated_scores_stay_finite(name, image, scale):
    model, x = tiny(5, scale), IMAGES[image]
    with torch.no_grad():
        probs = torch.sigmoid(model(x))
        y = probs >= 0.5
    if scale == 1e4:
        assert ((probs == 0) | (probs == 1)).float().mean() > 0.9  # really saturated
    A, B = _target()
    res = attacks.ATTACKS[name](model, x, y, A, B, progress=False, **FAST[name])
    check_result(res, model, x, y, A, B)
    check_metrics(metrics.evaluate_attack(model, x, res.x_adv, y, A, B))
    check_metrics(metrics.per_image_metrics(res.logits, x, res.x_adv, y, A, B), B)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_images_already_in_target_state_are_free_successes(name, scale):
    model, x = tiny(5, scale), IMAGES["random"]
    A, B = _target()
    with torch.no_grad():
        pred = model(x) >= 0
    y = pred ^ A  # the model already predicts y* = y XOR A
    res = attacks.ATTACKS[name](model, x, y, A, B, progress=False, **FAST[name])
    assert torch.equal(res.x_adv, x) and res.success.all()
    assert res.iterations.eq(0).all() and res.extras["l2"].eq(0).all()
    m = metrics.evaluate_attack(model, x, res.x_adv, y, A, B)
    check_metrics(m)
    assert m["rmsd"] == 0.0 and m["hamming_A"] == 0.0 and m["hamming_B"] == 0.0 and m["f1"] == 1.0


REAL_BUDGET = {"fgs": {"eps_max": 0.3, "n_eps": 11}, "fg": {"eps_max": 0.3, "n_eps": 11}, "ml_dp": {"max_iter": 10},
               "ml_cw": {"lambda_init": 10.0, "n_search": 3, "max_iter": 50, "lr": 0.05},
               "rank1": {"lambda_init": 10.0, "n_search": 3, "max_iter": 50, "lr": 0.05},
               "rank2": {"lambda_init": 10.0, "n_search": 3, "max_iter": 50, "lr": 0.05}}


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name", NAMES)
def test_attacks_really_attack_the_tiny_model(name):
    """The invariants above are not checked on clean images only: on ``tiny(3)`` (logits about ±2) with
    a moderate budget every attack moves every image, the classification attacks meet the random-case
    target on most images (measured of 12: FGS 10, FG 12, ML-DP 12, ML-CW 12) and the ranking attacks
    (which know no threshold) raise Kendall τ_b on every image, all checked on the model here."""
    model = tiny(3)
    x = 0.25 + 0.5 * torch.rand(64, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        y = model(x) >= 0
    t = lb.random_case(y, torch.Generator().manual_seed(6))
    k = t.eligible.nonzero().flatten()[:12]
    x, y, A, B = x[k], y[k], t.A[k], t.B[k]
    res = attacks.ATTACKS[name](model, x, y, A, B, progress=False, **REAL_BUDGET[name])
    check_result(res, model, x, y, A, B)
    assert (res.x_adv != x).flatten(1).any(1).all()
    with torch.no_grad():
        z0, z = model(x), model(res.x_adv)
    if name.startswith("rank"):
        crit = lb.kendall_criterion(y, A, B).double()
        tau = lambda s: torch.tensor([np_tau(s[i], crit[i]) for i in range(len(s))])  # noqa: E731
        assert (tau(z) > tau(z0)).all()
    else:
        met = (((z >= 0) == (y ^ A)) | ~(A | B)).all(1)
        assert int(met.sum()) >= 9, int(met.sum())


def np_tau(a, b) -> float:
    import scipy.stats

    return float(scipy.stats.kendalltau(a.double().numpy(), b.numpy()).statistic)


def test_evaluate_attack_on_exact_zero_one_scores():
    """Logits of probabilities exactly 0 and 1 (±30 in float32), with ties, in every degenerate row shape."""
    y = torch.tensor([[True, False, True], [False, False, False], [True, True, True], [True, False, False]])
    A = torch.tensor([[True, False, False], [True, True, True], [True, True, True], [False, True, False]])
    B = ~A
    scores = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 1.0]]) * 60 - 30
    x = torch.zeros(4, 1, 2, 2)
    per = metrics.per_image_metrics(scores, x, torch.ones_like(x), y, A, B)
    check_metrics(per, B)
    check_metrics(metrics.evaluate_attack(scores, x, torch.ones_like(x), y, A, B))
    assert torch.allclose(per["rmsd"], torch.full((4,), 255.0))


# ----------------------------------------------------------------------------- label sets and metrics
@st.composite
def label_matrices(draw):
    n, L = draw(st.integers(1, 6)), draw(st.integers(2, 12))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    return torch.rand(n, L, generator=g) < draw(st.floats(0.0, 1.0)), g


@settings(max_examples=examples(40), **SETTINGS)
@given(label_matrices(), st.sampled_from(sorted(lb.STRATEGIES)), st.sampled_from(lb.OMEGA_ZERO_CHOICES),
       st.integers(0, 11), st.booleans())
def test_generators_and_table_one(ym, strategy, omega_zero, j, by_name):
    y, g = ym
    L = y.shape[1]
    names = tuple(f"label{k}" for k in range(L))
    label = (names[j % L] if by_name else j % L) if strategy in ("reduce", "augment") else None
    t = lb.make_target(strategy, y, label=label, names=names, generator=g)
    assert t.A.dtype == t.B.dtype == t.eligible.dtype == torch.bool
    assert t.A.shape == t.B.shape == y.shape and t.eligible.shape == (y.shape[0],)
    d = lb.divisions(y, t.A, t.B, omega_zero)
    cells = torch.stack([d.A1, d.Am1, d.B1, d.Bm1, d.C1, d.Cm1]).long().sum(0)
    assert cells.eq(1).all(), "Table I cells partition the labels"
    assert torch.equal(d.omega_minus | d.omega_plus | (d.C1 | d.Cm1), torch.ones_like(y))
    tau = lb.kendall_criterion(y, t.A, t.B)
    for mask, value in ((d.A1, -2), (d.Bm1, -1), (d.C1 | d.Cm1, 0), (d.B1, 1), (d.Am1, 2)):
        assert tau[mask].eq(value).all()
    y_star = lb.target_labels(y, t.A)
    assert torch.equal(y_star[t.B], y[t.B]) and torch.equal(y_star[t.A], ~y[t.A])
    if strategy in ("reduce", "augment"):
        assert t.A[t.eligible, j % L].all() and t.A[t.eligible].sum(1).eq(1).all()


@settings(max_examples=examples(40), **SETTINGS)
@given(label_matrices(), st.sampled_from(["uniform", "ties", "saturated"]))
def test_metrics_stay_in_range(ym, kind):
    y, g = ym
    n, L = y.shape
    if kind == "uniform":
        scores = torch.rand(n, L, generator=g)
    elif kind == "ties":
        scores = torch.randint(0, 3, (n, L), generator=g).float() / 2
    else:
        scores = (torch.rand(n, L, generator=g) < 0.5).float()
    logits = scores.double().logit(eps=1e-12).float()  # the attack metrics take logits (0 / 1 -> ±27.6)
    role = torch.randint(0, 3, (n, L), generator=g)
    role[:, 0] = 0
    A, B = role == 0, role == 1
    x = torch.rand(n, 1, 2, 2, generator=g)
    x_adv = torch.rand(n, 1, 2, 2, generator=g)
    per = metrics.per_image_metrics(logits, x, x_adv, y, A, B)
    check_metrics(per, B)
    check_metrics(metrics.evaluate_attack(logits, x, x_adv, y, A, B))
    y_star = y ^ A
    # exact identities a reader can check on paper
    pred = logits >= 0
    assert torch.equal(pred, scores >= 0.5)
    assert torch.allclose(per["hamming_A"], ((pred ^ y_star) & A).sum(1).double().div(A.sum(1)).to(per["hamming_A"].dtype))
    both = y_star.any(1) & (~y_star).any(1)
    assert torch.equal(torch.isnan(per["auc"]), ~both)
    assert (per["map"][~both] == 1).all() and (per["ranking_loss"][~both] == 0).all()
    assert torch.allclose(per["auc"][both], 1 - per["ranking_loss"][both], atol=1e-6)  # one tie rule
    q = metrics.model_quality(scores, y)
    for k, v in q.items():
        assert math.isfinite(v) and 0 <= v <= 1, (k, v)


@settings(max_examples=examples(25), **SETTINGS)
@given(problems(max_n=3), st.sampled_from(["overlap", "empty_a", "not_bool", "range", "nan", "labels"]))
def test_invalid_inputs_raise_only_documented_errors(problem, fault):
    """Corrupting one valid input gives a ValueError / TypeError, never another exception."""
    L, scale, x, y, A, B = problem
    if fault == "overlap":
        B = B | A
    elif fault == "empty_a":
        A = torch.zeros_like(A)
    elif fault == "not_bool":
        A = A.float()
    elif fault == "range":
        x = x + 1.5
    elif fault == "nan":
        x = x.clone()
        x[0, 0, 0, 0] = float("nan")
    else:
        y, A, B = y[:, :1].repeat(1, L + 1), A[:, :1].repeat(1, L + 1), B[:, :1].repeat(1, L + 1)
    for name in NAMES:
        with pytest.raises((ValueError, TypeError)):
            attacks.ATTACKS[name](tiny(L, scale), x, y, A, B, progress=False, **FAST[name])
