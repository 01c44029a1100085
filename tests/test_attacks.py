"""Contract of every attack, on a fixture where every attack *succeeds*: output, validation, per-image
independence, chunking, out-of-memory splitting, bf16 / channels-last, determinism, edge cases.

The fixture (:func:`problems`): a tiny random conv net (``TinyConv``) with moderate logits (|z| about
0.6 on average, at most 2.7) on 16 images ``(3, 6, 6)`` with pixels in ``[0.25, 0.75]`` (room to
move both ways without clipping), labelled by the model itself, and two targets:

* ``"random"``: the random case of Sec. IV-E on the five real labels (one positive and one negative
  flipped, the three others kept);
* ``"extreme"``: every real label flipped (``B = ∅``): used for ML-DP's paper form, which drags every
  label of ``B`` onto the threshold as an equality and so keeps ``B`` only by chance.

The sixth label is an *anchor*: a constant logit 0 (the threshold itself), never in ``A ∪ B``, so in
``C``. It is the paper's soft threshold made literal: with ``Ω◦ = C`` (the default) Rank I's terms
``Ω- < Ω◦ < Ω+`` rank the labels to switch off below 0.5 and those to switch on above it, so Rank I
(which knows no threshold) meets the classification target too.

Success is always checked *independently* (:func:`independent`): the test runs the model on
``res.x_adv`` itself and checks every label of ``A`` flipped and every label of ``B`` kept with
``logit >= 0`` positive; never ``res.success``, ``n_met`` or ``attacks._core.finalize``. Measured successes
(of 16, clean images: 0): FGS 16, FG 16 (per image, scenario and fixed ε), ML-CW 16, ML-DP greedy 16,
ML-DP paper 14, Rank I 16, Rank II 16; every attack moves every image (RMSD 5-26 on 0-255); under
bf16 autocast (checked by a bf16 forward) 15-16.
"""
import pytest
import scipy.stats
import torch

from mlnb import attacks
from mlnb.attacks import AttackResult
from mlnb.labels import extreme_case, kendall_criterion, random_case

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_thread")]

L = 6  # five real labels and the anchor (a constant logit 0, in C)
N_IMAGES = 16
MIN_SUCCESS = 12  # of N_IMAGES, checked independently; measured 14-16 per variant
MIN_MOVED = 14  # images with x_adv != x; measured 16 per variant

SEARCH = {"lambda_init": 10.0, "n_search": 3, "max_iter": 50, "lr": 0.05}
# variant -> (attack, parameters, target case)
VARIANTS = {
    "fgs": ("fgs", {"eps_max": 0.2, "n_eps": 11}, "random"),
    "fgs_scenario": ("fgs", {"eps": "scenario", "eps_max": 0.2, "n_eps": 11}, "random"),
    "fgs_fixed": ("fgs", {"eps": 0.1}, "random"),
    "fg": ("fg", {"eps_max": 0.2, "n_eps": 11}, "random"),
    "fg_scenario": ("fg", {"eps": "scenario", "eps_max": 0.2, "n_eps": 11}, "random"),
    "fg_fixed": ("fg", {"eps": 0.1}, "random"),
    "ml_cw": ("ml_cw", SEARCH, "random"),
    "ml_dp": ("ml_dp", {"max_iter": 10}, "random"),
    # overshoot 0.5: the paper's form with overshoot 0 converges onto the threshold itself, where
    # float32 noise decides each label (see test_ml_dp_paper_form_is_batch_invariant in test_attack_params)
    "ml_dp_paper": ("ml_dp", {"form": "paper", "max_iter": 10, "overshoot": 0.5}, "extreme"),
    "rank1": ("rank1", SEARCH, "random"),
    "rank2": ("rank2", SEARCH, "random"),
}
# a scenario ε depends on every image of the call (documented): not independent of the batch
PER_IMAGE = [v for v, (_, p, _) in VARIANTS.items() if p.get("eps") != "scenario"]
FAST = {"fgs": VARIANTS["fgs"][1], "fg": VARIANTS["fg"][1], "ml_cw": SEARCH, "ml_dp": VARIANTS["ml_dp"][1],
        "rank1": SEARCH, "rank2": SEARCH}
NAMES = list(attacks.ATTACKS)


class TinyConv(torch.nn.Module):
    """``(N, 3, 6, 6) -> (N, 6)``: conv 3x3 (4 channels), tanh, linear to five logits, plus a constant
    logit 0 (the anchor label). Centred input, weights scaled for logits of order 1."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 36, L - 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 3 / 27 ** 0.5)
            self.conv.bias.zero_()
            self.fc.weight.copy_(torch.randn(self.fc.weight.shape, generator=g) * 2 / 144 ** 0.5)
            self.fc.bias.copy_(torch.randn(L - 1, generator=g) * 0.3)

    def forward(self, x):
        z = self.fc(torch.tanh(self.conv(x - 0.5)).flatten(1))
        return torch.cat([z, torch.zeros_like(z[:, :1])], 1)


def _targets(y: torch.Tensor, case: str):
    """Targets on the five real labels; the anchor (last column) is in C."""
    core = y[:, :-1]
    t = random_case(core, torch.Generator().manual_seed(2)) if case == "random" else extreme_case(core)
    pad = torch.zeros(y.shape[0], 1, dtype=torch.bool)
    return torch.cat([t.A, pad], 1), torch.cat([t.B, pad], 1), t.eligible


def tiny_problem(case: str, n: int):
    """``(model, x, y, A, B)``: :class:`TinyConv`, the first ``n`` of 64 seeded images eligible for ``case``
    (``"random"`` or ``"extreme"``), the model's own predictions as their labels, and their targets.
    The shared fixture of the attack test files."""
    model = TinyConv().eval()
    x = 0.25 + 0.5 * torch.rand(64, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x) >= 0
    A, B, eligible = _targets(y, case)
    k = eligible.nonzero().flatten()[:n]
    return model, x[k], y[k], A[k], B[k]


@pytest.fixture(scope="module")
def problems():
    out = {case: tiny_problem(case, N_IMAGES) for case in ("random", "extreme")}
    for model, x, y, A, B in out.values():
        assert len(x) == N_IMAGES
        assert not independent(model, x, y, A, B)[0].any()  # no clean image is a free success
    return out


@pytest.fixture(scope="module")
def setup(problems):
    return problems["random"]


def independent(model, x_adv, y, A, B, *, autocast_dtype=None, channels_last=False):
    """Eq. (4) checked by the test itself: ``(met (N,) bool, n_met (N,) int, logits (N, L))`` from the
    model run on ``x_adv`` here (``logit >= 0`` positive), never from the attack's own fields."""
    if channels_last:
        x_adv = x_adv.contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=autocast_dtype or torch.bfloat16,
                                         enabled=autocast_dtype is not None):
        z = model(x_adv).float()
    want, ab = y ^ A, A | B
    right = (z >= 0) == want
    return (right | ~ab).all(1), (right & ab).sum(1), z


def moved(res, x) -> torch.Tensor:
    return (res.x_adv != x).flatten(1).any(1)


class _Results:
    """Each variant's whole-batch result, computed once per module."""

    def __init__(self, problems):
        self.problems, self.cache = problems, {}

    def __getitem__(self, variant):
        if variant not in self.cache:
            name, params, case = VARIANTS[variant]
            model, x, y, A, B = self.problems[case]
            self.cache[variant] = attacks.ATTACKS[name](model, x, y, A, B, progress=False, **params)
        return self.cache[variant]


@pytest.fixture(scope="module")
def results(problems):
    return _Results(problems)


def _call(problems, variant, **extra):
    name, params, case = VARIANTS[variant]
    model, x, y, A, B = problems[case]
    return attacks.ATTACKS[name](model, x, y, A, B, progress=False, **params, **extra)


@pytest.mark.parametrize("variant", VARIANTS)
def test_fixture_attacks_succeed_on_most_images(problems, results, variant):
    model, x, y, A, B = problems[VARIANTS[variant][2]]
    res = results[variant]
    met, _, _ = independent(model, res.x_adv, y, A, B)
    assert int(met.sum()) >= MIN_SUCCESS, f"{variant}: {int(met.sum())}/{len(met)} images meet the target"
    assert int(moved(res, x).sum()) >= MIN_MOVED


@pytest.mark.parametrize("variant", VARIANTS)
def test_output_contract(problems, results, variant):
    model, x, y, A, B = problems[VARIANTS[variant][2]]
    res = results[variant]
    assert isinstance(res, AttackResult)
    n = x.shape[0]
    assert res.x_adv.shape == x.shape and res.scores.shape == (n, L) and res.logits.shape == (n, L)
    for t in (res.success, res.n_satisfied, res.iterations, res.param, res.kendall_tau):
        assert t.shape == (n,) and t.device == x.device
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    met, n_met, z = independent(model, res.x_adv, y, A, B)
    assert torch.allclose(res.logits, z, atol=1e-6)
    assert torch.allclose(res.scores, torch.sigmoid(z), atol=1e-6)
    assert torch.equal(res.success, met)
    assert torch.equal(res.n_satisfied, n_met)
    assert torch.equal(res.extras["n_constraints"], (A | B).sum(1))
    assert torch.allclose(res.extras["l2"], (res.x_adv - x).flatten(1).norm(dim=1), atol=1e-6)
    crit = kendall_criterion(y, A, B)
    want_tau = torch.tensor([scipy.stats.kendalltau(z[i].numpy(), crit[i].numpy()).statistic for i in range(n)])
    assert torch.allclose(res.kendall_tau.double(), want_tau.double(), atol=1e-6)
    assert torch.isfinite(res.kendall_tau).all() and torch.isfinite(res.scores).all()
    assert (res.iterations[moved(res, x)] >= 1).all()
    assert not model.training


@pytest.mark.parametrize("variant", PER_IMAGE)
def test_per_image_independence_and_determinism(problems, results, variant):
    name, params, case = VARIANTS[variant]
    model, x, y, A, B = problems[case]
    fn = attacks.ATTACKS[name]
    whole = results[variant]
    assert int(moved(whole, x).sum()) >= MIN_MOVED  # real adversarial examples are compared, not clean images
    again = fn(model, x, y, A, B, progress=False, **params)
    assert torch.equal(whole.x_adv, again.x_adv) and torch.equal(whole.iterations, again.iterations)
    assert torch.equal(whole.param.isnan(), again.param.isnan())
    for i in range(0, x.shape[0], 2):  # every other image alone (half the cost, same coverage of the kernels)
        one = fn(model, x[i:i + 1], y[i:i + 1], A[i:i + 1], B[i:i + 1], progress=False, **params)
        assert torch.allclose(one.x_adv, whole.x_adv[i:i + 1], atol=1e-5), i
        assert one.iterations.item() == whole.iterations[i].item(), i
        assert one.n_satisfied.item() == whole.n_satisfied[i].item(), i
    chunked = fn(model, x, y, A, B, progress=False, batch_size=3, **params)
    assert torch.allclose(chunked.x_adv, whole.x_adv, atol=1e-5)
    assert torch.equal(chunked.iterations, whole.iterations)


@pytest.mark.parametrize("variant", ["fgs_scenario", "fg_scenario"])
def test_scenario_eps_is_one_eps_for_the_call_whatever_the_chunks(problems, results, variant):
    model, x, y, A, B = problems[VARIANTS[variant][2]]
    whole = results[variant]
    assert int(moved(whole, x).sum()) >= MIN_MOVED
    assert (whole.param > 0).all() and whole.param.eq(whole.param[0]).all()  # one ε > 0 for every image
    chunked = _call(problems, variant, batch_size=3)
    assert torch.allclose(chunked.x_adv, whole.x_adv, atol=1e-6) and torch.equal(chunked.param, whole.param)


@pytest.mark.parametrize("name", NAMES)
def test_already_in_target_state_returns_clean_image(setup, name):
    model, x, _, A, B = setup
    with torch.no_grad():
        pred = model(x) >= 0
    y = pred ^ A  # the model already predicts y* = y XOR A everywhere
    res = attacks.ATTACKS[name](model, x, y, A, B, progress=False, **FAST[name])
    assert torch.equal(res.x_adv, x)
    assert res.success.all() and res.iterations.eq(0).all()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("value", [0.0, 1.0])
def test_black_and_white_images_give_finite_results(setup, name, value):
    model = setup[0]
    x = torch.full((2, 3, 6, 6), value)
    with torch.no_grad():
        y = model(x) >= 0
    A = torch.zeros_like(y)
    A[:, 0] = True
    B = ~A
    res = attacks.ATTACKS[name](model, x, y, A, B, progress=False, **FAST[name])
    for t in (res.x_adv, res.scores):
        assert torch.isfinite(t).all()
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1


def test_saturated_scores_stay_finite():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)).eval()
    with torch.no_grad():
        model[1].weight.fill_(50.0)
        model[1].bias.copy_(torch.tensor([100.0, -100.0, 100.0]))
    x = torch.rand(2, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([[True, False, True]] * 2)
    A = torch.tensor([[True, False, False]] * 2)
    for name in NAMES:
        res = attacks.ATTACKS[name](model, x, y, A, ~A, progress=False, **FAST[name])
        assert torch.isfinite(res.x_adv).all() and torch.isfinite(res.scores).all(), name


@pytest.mark.parametrize("name", NAMES)
def test_validation_errors(setup, name):
    model, x, y, A, B = setup
    fn = attacks.ATTACKS[name]
    model.train()
    try:
        with pytest.raises(ValueError, match="training mode"):
            fn(model, x, y, A, B, progress=False)
    finally:
        model.eval()
    with pytest.raises(ValueError, match="overlap"):
        fn(model, x, y, A, A | B, progress=False)
    with pytest.raises(ValueError, match="A is empty"):
        fn(model, x, y, torch.zeros_like(A), B, progress=False)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fn(model, x * 2, y, A, B, progress=False)
    extra = lambda m: torch.cat([m, torch.zeros_like(m[:, :1])], 1)  # noqa: E731  (one label too many)
    with pytest.raises(ValueError, match="model predicts|labels need"):
        fn(model, x, extra(y), extra(A), extra(B), progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        fn(model, x, y, A, B, progress=False, batch_size=0)
    with pytest.raises(ValueError, match="autocast_dtype"):
        fn(model, x, y, A, B, progress=False, autocast_dtype=torch.int8)


@pytest.mark.parametrize("name,bad", [
    ("fgs", {"eps_max": 0.0}), ("fg", {"eps_max": -1.0}), ("fgs", {"n_eps": 1}),
    ("ml_cw", {"lambda_init": 0.0}), ("ml_cw", {"max_iter": 0}), ("ml_cw", {"lr": -1.0}),
    ("ml_cw", {"kappa": -0.1}), ("ml_dp", {"max_iter": 0}), ("ml_dp", {"overshoot": -1.0}),
    ("rank1", {"n_search": 0}), ("rank1", {"omega_zero": "D"}), ("rank2", {"weights": (1, 1, 1)}),
    ("rank2", {"threshold": 1.5}), ("rank1", {"select": "best"}), ("rank1", {"tanh_eps": 0.7}),
])
def test_bad_params_raise(setup, name, bad):
    model, x, y, A, B = setup
    with pytest.raises((ValueError, TypeError)):
        attacks.ATTACKS[name](model, x, y, A, B, progress=False, **bad)


class _Picky(torch.nn.Module):
    """The model, but "out of memory" on more than ``limit`` images; counts the refusals."""

    def __init__(self, inner, limit):
        super().__init__()
        self.inner, self.limit, self.refused = inner, limit, 0

    def forward(self, z):
        if z.shape[0] > self.limit:
            self.refused += 1
            raise torch.cuda.OutOfMemoryError("simulated")
        return self.inner(z)


@pytest.mark.parametrize("variant", ["fgs", "fgs_scenario", "fg", "ml_cw", "ml_dp", "ml_dp_paper", "rank2"])
def test_oom_splits_batch_with_same_results(problems, results, variant):
    name, params, case = VARIANTS[variant]
    model, x, y, A, B = problems[case]
    picky = _Picky(model, 4).eval()
    split = attacks.ATTACKS[name](picky, x, y, A, B, progress=False, **params)
    assert picky.refused > 0  # the out-of-memory path really ran
    whole = results[variant]
    assert int(moved(split, x).sum()) >= MIN_MOVED
    assert torch.allclose(split.x_adv, whole.x_adv, atol=1e-5), variant
    assert torch.equal(split.n_satisfied, whole.n_satisfied) and torch.equal(split.iterations, whole.iterations)
    met, _, _ = independent(model, split.x_adv, y, A, B)
    assert int(met.sum()) >= MIN_SUCCESS


@pytest.mark.parametrize("variant", PER_IMAGE)
def test_channels_last_gives_the_same_examples(problems, results, variant):
    model, x, _, _, _ = problems[VARIANTS[variant][2]]
    res = _call(problems, variant, channels_last=True)
    whole = results[variant]
    assert int(moved(res, x).sum()) >= MIN_MOVED
    assert torch.allclose(res.x_adv, whole.x_adv, atol=1e-5)
    assert torch.equal(res.n_satisfied, whole.n_satisfied)


@pytest.mark.parametrize("variant", ["ml_cw", "rank2", "ml_dp", "fg", "ml_dp_paper"])
def test_bf16_autocast_and_channels_last(problems, variant):
    model, x, y, A, B = problems[VARIANTS[variant][2]]
    res = _call(problems, variant, autocast_dtype=torch.bfloat16, channels_last=True)
    assert torch.isfinite(res.x_adv).all() and res.x_adv.shape == x.shape
    assert res.scores.dtype == torch.float32 and res.logits.dtype == torch.float32
    assert int(moved(res, x).sum()) >= MIN_MOVED
    # the reported logits are the bf16 forward's, and the bf16 model really is fooled
    met, n_met, z = independent(model, res.x_adv, y, A, B, autocast_dtype=torch.bfloat16, channels_last=True)
    assert torch.equal(res.logits, z)
    assert torch.equal(res.success, met) and torch.equal(res.n_satisfied, n_met)
    assert int(met.sum()) >= MIN_SUCCESS  # measured 15 (ML-DP paper) to 16


def test_ml_cw_finds_smaller_perturbations_than_fgs(setup, results):
    model, x, y, A, B = setup
    cw, f = results["ml_cw"], results["fgs"]
    both = independent(model, cw.x_adv, y, A, B)[0] & independent(model, f.x_adv, y, A, B)[0]
    assert int(both.sum()) >= MIN_SUCCESS
    l2 = lambda r: (r.x_adv - x).flatten(1).norm(dim=1)[both]  # noqa: E731
    assert l2(cw).mean() < 0.75 * l2(f).mean()  # measured: 0.53x


def test_ml_cw_logit_hinge_moves_labels_the_saturated_probability_hinge_cannot():
    """Extension ``hinge_space="logit"``: on a model whose float32 probabilities are exactly 0 or 1,
    Eq. (5) on probabilities has a zero gradient (the clean image comes back); on logits it succeeds."""
    torch.manual_seed(0)
    lin = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    with torch.no_grad():
        lin[1].weight.copy_(torch.tensor([[60.0, 0, 0, 0], [0, 60.0, 0, 0]]))
        lin[1].bias.copy_(torch.tensor([-30.0, -30.0]))
    model = lin.eval()
    x = torch.tensor([[0.9, 0.1, 0.5, 0.5]]).view(1, 1, 2, 2)  # logits +24 and -24: saturated
    y = torch.tensor([[True, False]])
    A, B = torch.tensor([[True, False]]), torch.tensor([[False, True]])
    assert torch.sigmoid(model(x)).eq(1.0).any()
    kw = dict(lambda_init=10.0, n_search=3, max_iter=200, progress=False)
    prob = attacks.ml_cw(model, x, y, A, B, **kw)
    logit = attacks.ml_cw(model, x, y, A, B, hinge_space="logit", **kw)
    assert not prob.success.any() and torch.equal(prob.x_adv, x)
    assert independent(model, logit.x_adv, y, A, B)[0].all()
    with torch.no_grad():
        z = model(logit.x_adv)[0]
    assert z[0] < 0 and z[1] < 0
    with pytest.raises(ValueError, match="unknown hinge_space"):
        attacks.ml_cw(model, x, y, A, B, hinge_space="logits", **kw)


# ----------------------------------------------------------------------------- found by the mutation sample
@pytest.mark.parametrize("variant", ["ml_cw", "rank1", "rank2"])
def test_the_accelerator_path_gives_the_cpu_paths_examples(problems, results, variant, monkeypatch):
    """The search driver decides on the host on CPU and branch-free elsewhere (no sync per step);
    forced onto the branch-free path here, it returns the same examples."""
    from mlnb.attacks import _driver

    monkeypatch.setattr(_driver, "HOST_DECISIONS", False)
    paths, set_rows = set(), _driver._set_rows

    def spy(dst, mask, src, host):
        paths.add(host)
        return set_rows(dst, mask, src, host)

    monkeypatch.setattr(_driver, "_set_rows", spy)
    branch_free, host = _call(problems, variant), results[variant]
    assert paths == {False}  # the branch-free path really ran
    assert torch.allclose(branch_free.x_adv, host.x_adv, atol=1e-6), variant
    for field in ("success", "n_satisfied", "iterations"):
        assert torch.equal(getattr(branch_free, field), getattr(host, field)), field
    assert torch.allclose(branch_free.param, host.param, equal_nan=True)


class _Recorder(torch.nn.Module):
    """The model, remembering every image it is shown."""

    def __init__(self, model):
        super().__init__()
        self.model, self.seen = model, []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.model(x)


@pytest.mark.parametrize("host", [None, False])
@pytest.mark.parametrize("name", ["ml_cw", "rank2"])
def test_every_lambda_run_starts_from_the_clean_image(setup, name, host, monkeypatch):
    """Carlini & Wagner's search restarts each λ run at w0 (the clean image), not where the last run ended:
    with early abort off, the model sees the clean image at the first step of each of the n_search runs."""
    from mlnb.attacks import _driver

    monkeypatch.setattr(_driver, "HOST_DECISIONS", host)
    model, x, y, A, B = setup
    rec = _Recorder(model).eval()
    attacks.ATTACKS[name](rec, x[:2], y[:2], A[:2], B[:2], progress=False, early_abort=False,
                          **{**SEARCH, "n_search": 3, "max_iter": 20})
    at_clean = [k for k, s in enumerate(rec.seen) if s.shape[0] == 2 and (s - x[:2]).abs().max() < 1e-5]
    # a clean forward before the search, then the first step of each run (20 steps apart)
    assert len(at_clean) == 4 and [b - a for a, b in zip(at_clean[1:], at_clean[2:])] == [20, 20], at_clean


def _ml_cw_from_scratch(model, x, target, ab, lam, lr, T, n_runs, tanh_eps=1e-6):
    """Sec. III-B1 written out for ONE image (x (1, C, H, W)): per λ run, Adam on w with x* = (tanh w + 1)/2
    from the clean image, loss ||x* - x||² + λ Σ_{A∪B} max(0, -s (σ(z) - 0.5)); the run's best iterate by
    (constraints met, -||r||²); λ halved after a run that met every constraint at some step (no lower bound
    yet), x10 after one that did not (no upper bound yet), else bisected; the best over the runs is
    returned if it meets more constraints than the clean image. Returns (x*, λ of x* or NaN)."""
    from mlnb.probability import sigmoid

    with torch.no_grad():
        best = (int(((model(x) >= 0) == target)[ab].sum()), 0.0, x, float("nan"))  # (met, -dist, x*, λ)
    lo, hi = 0.0, float("inf")
    w0 = torch.atanh((2 * x - 1) * (1 - tanh_eps))
    for _ in range(n_runs):
        w, m, v = w0.clone().requires_grad_(True), torch.zeros_like(x), torch.zeros_like(x)
        run_best, ok = None, False
        for k in range(1, T + 1):
            xa = (torch.tanh(w) + 1) / 2
            z = model(xa).double()
            h = torch.clamp(torch.where(target, 0.5 - sigmoid(z), sigmoid(z) - 0.5), min=0)[ab].sum()
            dist = ((xa - x).double() ** 2).sum()
            met = int(((z >= 0) == target)[ab].sum())
            ok |= met == int(ab.sum())
            if run_best is None or (met, -float(dist.detach())) > run_best[:2]:
                run_best = (met, -float(dist.detach()), xa.detach().clone(), lam)
            (g,) = torch.autograd.grad(dist + lam * h, w)
            with torch.no_grad():
                m.mul_(0.9).add_(g, alpha=0.1)
                v.mul_(0.999).addcmul_(g, g, value=0.001)
                w.addcdiv_(m / (1 - 0.9 ** k), (v / (1 - 0.999 ** k)).sqrt() + 1e-8, value=-lr)
        if run_best[:2] > best[:2]:
            best = run_best
        hi, lo = (min(hi, lam), lo) if ok else (hi, max(lo, lam))
        lam = (lo + hi) / 2 if hi < float("inf") else lam * 10
    return best[2], best[3]


@pytest.mark.parametrize("lam", [0.5, 10.0])
def test_ml_cw_is_its_algorithm_written_out_for_one_image(setup, lam):
    """The batched driver against the algorithm written plainly, image by image (four λ runs: the search
    moves λ both ways), early abort off so both take every step."""
    model, x, y, A, B = setup
    T, lr, runs, n = 15, 0.05, 4, 8
    res = attacks.ml_cw(model, x[:n], y[:n], A[:n], B[:n], progress=False, lambda_init=lam, n_search=runs,
                        max_iter=T, lr=lr, early_abort=False)
    assert (res.iterations == runs * T).all()  # early abort off: every step of every run is taken
    # at λ = 0.5 images 6 and 7 fail a run after a success: their λ bisects back up (a search that forgot
    # to reset its per-run success flag would keep halving and return another example)
    for i in range(n):
        want, want_lam = _ml_cw_from_scratch(model, x[i:i + 1], (y ^ A)[i:i + 1], (A | B)[i:i + 1], lam, lr, T, runs)
        # 1e-6: the same float32 operations in another order (the driver carries Adam's 2x scaled moments);
        # measured 3e-8 to 1.2e-7, on perturbations of 0.025-0.075 per pixel
        assert torch.allclose(res.x_adv[i:i + 1], want, atol=1e-6), (i, float((res.x_adv[i:i + 1] - want).abs().max()))
        assert torch.allclose(res.param[i], torch.tensor(want_lam), equal_nan=True), i


def test_the_progress_bar_advances_at_every_check_not_only_at_the_end(setup, monkeypatch):
    """The search's bar moves every ``check_every`` steps (a long run shows progress while it runs)."""
    from mlnb.attacks import _core, _driver

    updates = []

    class Bar:
        def __init__(self, total, enabled, desc):
            self.total, self.n = total, 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, k):
            updates.append(k)
            self.n += k

    monkeypatch.setattr(_driver, "progress_bar", Bar)
    monkeypatch.setattr(_core, "progress_bar", Bar)
    model, x, y, A, B = setup
    attacks.ml_cw(model, x[:2], y[:2], A[:2], B[:2], progress=False, lambda_init=10.0, n_search=1, max_iter=20,
                  check_every=5, early_abort=False)
    assert updates[:4] == [10, 10, 10, 10] and sum(updates) == 2 * 20  # 2 images x 5 steps per check


def test_an_undefined_tau_ranks_below_every_defined_one():
    """All scores tied: Kendall's tau-b is undefined (NaN) and the search's selection key puts it at -2,
    below the worst defined value (-1)."""
    from mlnb.attacks._state import _tau
    from mlnb.metrics import tau_b_parts

    ytau = tau_b_parts(torch.tensor([[-2, -1, 0, 1, 2]], dtype=torch.int8), torch.float32)
    assert _tau(torch.zeros(1, 5), ytau).item() == -2.0
    assert _tau(torch.tensor([[2.0, 1.0, 0.0, -1.0, -2.0]]), ytau).item() == pytest.approx(-1.0)


def test_the_search_tau_is_kendalls_tau_b_to_the_bit():
    """The driver's selection key reads the criterion's pair signs made once per target (tau_b_parts); it is
    metrics.tau_b_kernel to the bit (NaN -> -2), ties, constant rows and non-finite logits included."""
    from mlnb.attacks._state import _tau
    from mlnb.metrics import tau_b_kernel, tau_b_parts

    g = torch.Generator().manual_seed(0)
    z = (torch.randn(60, 10, generator=g) * 5).round(decimals=1)
    z[0], z[1, 3], z[2, 4], z[3, 0] = 1.0, float("nan"), float("inf"), -float("inf")
    ytau = torch.randint(-2, 3, (60, 10), generator=g).to(torch.int8)
    ytau[4] = 1  # a constant criterion
    want = torch.nan_to_num(tau_b_kernel(z, ytau), nan=-2.0)
    assert torch.equal(_tau(z, tau_b_parts(ytau, z.dtype)).view(torch.int32), want.view(torch.int32))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_the_driver_state_block_hands_out_disjoint_filled_views(dtype):
    """The driver's per-image state lives in one allocation (state_block): views shaped like the images,
    the first filled from init, disjoint, and float64 squares (n, C*H*W), for any image dtype."""
    from mlnb.attacks._state import state_block

    x = torch.rand(3, 2, 5, 7).to(dtype)
    (a, b, c, *scratch), squares = state_block(x, (x, 0, 1.5), 2)
    assert all(t.shape == x.shape and t.dtype == dtype and t.is_contiguous() for t in (a, b, c, *scratch))
    assert squares.shape == (3, 70) and squares.dtype == torch.float64 and squares.is_contiguous()
    assert torch.equal(a, x) and not b.any() and bool((c == 1.5).all())
    for t in (b, c, *scratch, squares):
        t.fill_(7)
    assert torch.equal(a, x)  # nothing else wrote into it
    ptrs = sorted((t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()) for t in (a, b, c, *scratch, squares))
    assert all(end <= start for (_, end), (start, _) in zip(ptrs, ptrs[1:]))


class _Float64Logits(torch.nn.Module):
    """A float64 model whose label 0 sits at logit -1e-50 (negative) and cannot move, label 1 at +1: in float32
    the first would round to -0.0, which reads as positive (``logit >= 0``)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))

    def forward(self, x):
        s = x.flatten(1).sum(1) * self.w
        return torch.stack([s - 1e-50, s + 1], 1)


@pytest.mark.filterwarnings("ignore:the model's logits have a zero gradient")  # its label 0 cannot move, by design
@pytest.mark.parametrize("name", sorted(attacks.ATTACKS))
def test_float64_logits_are_not_rounded_to_float32(name):
    # the target asks label 0 on; its logit stays at -1e-50 whatever the image, so no attack may report success
    x = torch.full((2, 1, 2, 2), 0.5, dtype=torch.float64)
    y = torch.tensor([[False, True]] * 2)
    A = torch.tensor([[True, False]] * 2)
    kw = {"max_iter": 3} if name in ("ml_dp", "mla_lp") else ({} if name in ("fgs", "fg") else
                                                               {"n_search": 1, "max_iter": 3})
    res = attacks.ATTACKS[name](_Float64Logits().eval(), x, y, A, ~A, progress=False, **kw)
    assert res.logits.dtype == torch.float64 and bool((res.logits[:, 0] < 0).all())
    assert not bool(res.success.any())


@pytest.mark.parametrize("name", NAMES + ["mla_lp"])
def test_an_attack_called_under_no_grad_gives_the_same_result(name):
    """Every attack takes its own gradients, also inside a caller's ``torch.no_grad()`` block."""
    model, x, y, A, B = tiny_problem("random", 4)
    attack = getattr(attacks, name)
    kw = {**FAST.get(name, {"max_iter": 5}), "progress": False}
    plain = attack(model, x, y, A, B, **kw)
    with torch.no_grad():
        inside = attack(model, x, y, A, B, **kw)
    assert torch.equal(plain.x_adv, inside.x_adv) and torch.equal(plain.logits, inside.logits)
    assert bool((plain.x_adv != x).any())  # the attack did move the images: gradients were taken


@pytest.mark.parametrize("name", ["topk_untargeted", "topk_universal"])
def test_a_topk_attack_called_under_no_grad_gives_the_same_result(name):
    model, x, y, _, _ = tiny_problem("random", 4)
    attack = getattr(attacks, name)
    plain = attack(model, x, y, k=1, max_iter=5, progress=False)
    with torch.no_grad():
        inside = attack(model, x, y, k=1, max_iter=5, progress=False)
    assert torch.equal(plain.x_adv, inside.x_adv) and bool((plain.x_adv != x).any())

