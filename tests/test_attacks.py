"""Contract of every attack: output, validation, per-image independence, determinism, edge cases."""
import pytest
import torch

from mlnb import attacks
from mlnb.attack_core import AttackResult
from mlnb.labels import random_case

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_thread")]

L = 5
FAST = {
    "fgs": {"n_eps": 5},
    "fg": {"n_eps": 5},
    "ml_cw": {"lambda_init": 10.0, "n_search": 2, "max_iter": 20},
    "ml_dp": {"max_iter": 5},
    "rank1": {"lambda_init": 10.0, "n_search": 2, "max_iter": 20},
    "rank2": {"lambda_init": 10.0, "n_search": 2, "max_iter": 20},
}
NAMES = list(attacks.ATTACKS)


def _model():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.BatchNorm2d(6), torch.nn.Tanh(),
                            torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(24, L))
    with torch.no_grad():
        m[0].weight.mul_(4)
        m[5].weight.mul_(4)
    return m.eval()


@pytest.fixture(scope="module")
def setup():
    model = _model()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(8, 3, 6, 6, generator=g)
    with torch.no_grad():
        y = model(x) >= 0
    t = random_case(y, torch.Generator().manual_seed(2))
    keep = t.eligible
    assert keep.sum() >= 4
    return model, x[keep][:4], y[keep][:4], t.A[keep][:4], t.B[keep][:4]


@pytest.mark.parametrize("name", NAMES)
def test_output_contract(setup, name):
    model, x, y, A, B = setup
    res = attacks.ATTACKS[name](model, x, y, A, B, progress=False, **FAST[name])
    assert isinstance(res, AttackResult)
    n = x.shape[0]
    assert res.x_adv.shape == x.shape and res.scores.shape == (n, L)
    for t in (res.success, res.n_satisfied, res.iterations, res.param, res.kendall_tau):
        assert t.shape == (n,) and t.device == x.device
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    with torch.no_grad():
        assert torch.allclose(res.scores, torch.sigmoid(model(res.x_adv)), atol=1e-6)
    target, ab = y ^ A, A | B
    ok = ((res.scores >= 0.5) == target) | ~ab
    assert torch.equal(res.success, ok.all(1))
    assert torch.equal(res.n_satisfied, (((res.scores >= 0.5) == target) & ab).sum(1))
    assert torch.isfinite(res.kendall_tau).all() and torch.isfinite(res.scores).all()
    assert not model.training


@pytest.mark.parametrize("name", NAMES)
def test_per_image_independence_and_determinism(setup, name):
    model, x, y, A, B = setup
    fn = attacks.ATTACKS[name]
    whole = fn(model, x, y, A, B, progress=False, **FAST[name])
    again = fn(model, x, y, A, B, progress=False, **FAST[name])
    assert torch.equal(whole.x_adv, again.x_adv) and torch.equal(whole.iterations, again.iterations)
    for i in range(x.shape[0]):
        one = fn(model, x[i:i + 1], y[i:i + 1], A[i:i + 1], B[i:i + 1], progress=False, **FAST[name])
        assert torch.allclose(one.x_adv, whole.x_adv[i:i + 1], atol=1e-5), i
        assert one.iterations.item() == whole.iterations[i].item()
        assert one.n_satisfied.item() == whole.n_satisfied[i].item()
    chunked = fn(model, x, y, A, B, progress=False, batch_size=3, **FAST[name])
    assert torch.allclose(chunked.x_adv, whole.x_adv, atol=1e-5)


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
    model, _, _, _, _ = setup
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
    with pytest.raises(ValueError, match="model predicts|labels need"):
        fn(model, x, y[:, :3], A[:, :3], B[:, :3], progress=False)
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


def test_oom_splits_batch_with_same_results(setup):
    model, x, y, A, B = setup

    class Picky(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, z):
            if z.shape[0] > 2:
                raise torch.cuda.OutOfMemoryError("simulated")
            return self.inner(z)

    picky = Picky(model).eval()
    for name in ("ml_cw", "ml_dp", "fgs"):
        a = attacks.ATTACKS[name](picky, x, y, A, B, progress=False, **FAST[name])
        b = attacks.ATTACKS[name](model, x, y, A, B, progress=False, batch_size=2, **FAST[name])
        assert torch.allclose(a.x_adv, b.x_adv, atol=1e-6), name


@pytest.mark.parametrize("name", ["ml_cw", "rank2", "ml_dp"])
def test_bf16_autocast_and_channels_last(setup, name):
    model, x, y, A, B = setup
    res = attacks.ATTACKS[name](model, x, y, A, B, progress=False, autocast_dtype=torch.bfloat16,
                                channels_last=True, **FAST[name])
    assert torch.isfinite(res.x_adv).all() and res.x_adv.shape == x.shape
    assert res.scores.dtype == torch.float32


def test_rank_options_run_and_select_rules(setup):
    model, x, y, A, B = setup
    kw = dict(progress=False, lambda_init=10.0, n_search=2, max_iter=20)
    for opts in ({"pairwise": True}, {"threshold": 0.5}, {"omega_zero": "empty"}, {"omega_zero": "C-1"},
                 {"select": "constraints"}):
        res = attacks.rank2(model, x, y, A, B, **kw, **opts)
        assert torch.isfinite(res.x_adv).all()
    tau = attacks.rank2(model, x, y, A, B, **kw)
    con = attacks.rank2(model, x, y, A, B, select="constraints", **kw)
    # selecting across λ by constraints first never satisfies fewer constraints than by tau first
    assert (con.n_satisfied >= tau.n_satisfied).all()


def test_ml_cw_beats_fgs_on_constraints(setup):
    model, x, y, A, B = setup
    cw = attacks.ml_cw(model, x, y, A, B, progress=False, lambda_init=10.0, n_search=3, max_iter=60)
    f = attacks.fgs(model, x, y, A, B, progress=False)
    assert cw.n_satisfied.sum() >= f.n_satisfied.sum()
    assert cw.success.any()


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
    assert logit.success.all() and (logit.scores[0, 0] < 0.5) and (logit.scores[0, 1] < 0.5)
    with pytest.raises(ValueError, match="unknown hinge_space"):
        attacks.ml_cw(model, x, y, A, B, hinge_space="logits", **kw)
