"""FGS / FG: the three ways of choosing ε (per image, one per scenario as in the paper, fixed), against
an independent evaluation of the constraints (never the attack's own success formula)."""
import pytest
import torch

from mlnb import attacks
from mlnb.labels import random_case

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_thread")]

L = 5


def _model():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.Tanh(), torch.nn.AdaptiveAvgPool2d(2),
                            torch.nn.Flatten(), torch.nn.Linear(24, L))
    with torch.no_grad():
        m[0].weight.mul_(4)
        m[4].weight.mul_(4)
    return m.eval()


@pytest.fixture(scope="module")
def setup():
    model = _model()
    x = torch.rand(24, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x) >= 0
    t = random_case(y, torch.Generator().manual_seed(2))
    k = t.eligible
    return model, x[k], y[k], t.A[k], t.B[k]


def _met(model, x_adv, y, A, B):
    """Independent check of Eq. (4): every label of A flipped, every label of B kept (logit >= 0 positive)."""
    with torch.no_grad():
        pos = model(x_adv) >= 0
    want = y ^ A
    return ((pos == want) | ~(A | B)).all(1), ((pos == want) & (A | B)).sum(1)


def _step(model, x, y, A, B, norm):
    xg = x.clone().requires_grad_(True)
    z = model(xg)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(z, (y ^ A).float(), reduction="none")
    (g,) = torch.autograd.grad((loss * (A | B)).sum(), xg)
    if norm == "linf":
        return torch.sign(g)
    return g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * g[0].numel() ** 0.5


@pytest.mark.parametrize("name,norm", [("fgs", "linf"), ("fg", "rms")])
def test_fixed_eps_is_one_signed_step(setup, name, norm):
    model, x, y, A, B = setup
    eps = 6 / 255
    res = attacks.ATTACKS[name](model, x, y, A, B, eps=eps, progress=False)
    want = (x - eps * _step(model, x, y, A, B, norm)).clamp(0, 1)
    assert torch.allclose(res.x_adv, want, atol=1e-6)  # direction and scale: a wrong sign or ε fails here
    assert torch.allclose(res.param, torch.full_like(res.param, eps))
    ok, _ = _met(model, res.x_adv, y, A, B)
    assert torch.equal(res.success, ok)


@pytest.mark.parametrize("name", ["fgs", "fg"])
def test_scenario_eps_is_one_eps_that_maximises_success(setup, name):
    model, x, y, A, B = setup
    res = attacks.ATTACKS[name](model, x, y, A, B, eps="scenario", eps_max=10 / 255, n_eps=11, progress=False)
    assert res.param.unique().numel() == 1 and res.param[0] > 0  # one ε > 0: no clean-image fallback
    assert (res.x_adv != x).flatten(1).any(1).all()
    # brute force over the same grid with fixed-ε runs: the chosen ε has the most full successes
    grid = torch.linspace(0, 10 / 255, 11)[1:]
    counts = []
    for e in grid.tolist():
        ok, n = _met(model, attacks.ATTACKS[name](model, x, y, A, B, eps=e, progress=False).x_adv, y, A, B)
        counts.append((int(ok.sum()), int(n.sum())))
    best = max(counts)
    chosen = int((grid - res.param[0]).abs().argmin())
    assert counts[chosen] == best and all(c < best for c in counts[:chosen])  # ties go to the smaller ε
    assert torch.allclose(res.extras["success_by_eps"], torch.tensor([c[0] / len(x) for c in counts]))


@pytest.mark.parametrize("name", ["fgs", "fg"])
def test_per_image_search_is_best_per_image(setup, name):
    model, x, y, A, B = setup
    res = attacks.ATTACKS[name](model, x, y, A, B, eps_max=10 / 255, n_eps=6, progress=False)
    grid = torch.linspace(0, 10 / 255, 6)
    per = torch.stack([_met(model, attacks.ATTACKS[name](model, x, y, A, B, eps=e, progress=False).x_adv,
                            y, A, B)[1] if e > 0 else _met(model, x, y, A, B)[1] for e in grid.tolist()], 1)
    _, n_res = _met(model, res.x_adv, y, A, B)
    assert torch.equal(n_res, per.amax(1))  # each image gets its own best ε (ε = 0 allowed)
    # and batch == one by one
    one = torch.cat([attacks.ATTACKS[name](model, x[i:i + 1], y[i:i + 1], A[i:i + 1], B[i:i + 1], eps_max=10 / 255,
                                           n_eps=6, progress=False).x_adv for i in range(len(x))])
    assert torch.allclose(one, res.x_adv, atol=1e-6)


@pytest.mark.parametrize("bad", ["image", -0.1, 0.0, True])
def test_bad_eps(setup, bad):
    model, x, y, A, B = setup
    with pytest.raises((ValueError, TypeError), match="eps"):
        attacks.fgs(model, x, y, A, B, eps=bad, progress=False)


def test_float16_autocast_points_to_bfloat16(setup):
    model, x, y, A, B = setup
    with pytest.raises(ValueError, match="bfloat16"):
        attacks.ml_cw(model, x, y, A, B, autocast_dtype=torch.float16, progress=False)


@pytest.mark.unit
def test_scenario_eps_prefers_fully_met_images_even_when_another_eps_meets_more_constraints():
    """Lexicographic: most images with every constraint met first, total constraints only to break a tie.
    Two images with 1 and 10 constraints: ε0 fully meets image 0 (1 constraint in all), ε1 meets 9 of
    image 1's 10 (9 in all, no image fully). (A weighted key ``full * (n G + 1) + total`` picked ε1 here:
    its weight 5 is below the 9 constraints a single image can add.)"""
    from mlnb.attacks.fast_gradient import pick_scenario

    n_met = torch.tensor([[1, 0], [0, 9]])  # (n images, G eps)
    assert pick_scenario(n_met, torch.tensor([1, 10])) == 0
    assert pick_scenario(torch.tensor([[1, 1], [3, 9]]), torch.tensor([1, 10])) == 1  # tie on full: total
    assert pick_scenario(torch.tensor([[1, 1], [5, 5]]), torch.tensor([1, 10])) == 0  # full tie: smaller ε
    assert pick_scenario(torch.tensor([[0, 1]]), torch.tensor([1])) == 1  # the only fully met ε, total 1


@pytest.mark.unit
@pytest.mark.parametrize("norm", ["linf", "rms"])
def test_a_zero_gradient_gives_a_zero_step_and_leaves_the_other_images_alone(norm):
    from mlnb.attacks.fast_gradient import direction

    g = torch.zeros(2, 3, 4, 4)
    g[1, 0, 0, 0], g[1, 2, 3, 1] = 2.0, -0.5
    d = direction(g, norm)
    assert torch.equal(d[0], torch.zeros(3, 4, 4))
    if norm == "rms":  # root-mean-square 1 per pixel
        assert d[1].pow(2).mean().item() == pytest.approx(1.0, rel=1e-6)
    else:
        assert d[1].abs().sum() == 2


@pytest.mark.unit
def test_target_gradient_is_each_images_own_sum_over_a_union_b_only():
    """Per image, the gradient of sum_{k in A ∪ B} BCE(z_k, y*_k): labels outside A ∪ B and the other
    images of the batch contribute nothing (a batch mean over all labels would mix both in)."""
    from mlnb.attacks._core import Runtime
    from mlnb.attacks.fast_gradient import target_gradient

    torch.manual_seed(0)
    W = torch.randn(3, 2 * 2 * 2, dtype=torch.float64)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 3, bias=False)).double().eval()
    model[1].weight.data = W
    x = torch.rand(2, 2, 2, 2, dtype=torch.float64)
    target = torch.tensor([[True, False, True], [False, False, True]])
    ab = torch.tensor([[True, True, False], [False, True, False]])
    g = target_gradient(Runtime(model), x, target, ab)
    z = x.flatten(1) @ W.T
    dz = torch.sigmoid(z) - target.double()  # d BCE / d z
    want = ((dz * ab) @ W).view_as(x)
    torch.testing.assert_close(g, want)


@pytest.mark.unit
@pytest.mark.parametrize("norm", ["linf", "rms"])
def test_grid_scores_score_the_image_clipped_to_the_unit_box(norm):
    """Images at 0 and at 1 and a large ε: half of each step leaves [0, 1]; the L2 distance and the
    constraints are those of clip(x - ε d, 0, 1), computed here from the returned d."""
    from mlnb.attacks._core import Runtime
    from mlnb.attacks.fast_gradient import grid_scores
    from mlnb.target import Target

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)).eval()
    x = torch.stack([torch.zeros(3, 2, 2), torch.ones(3, 2, 2), torch.full((3, 2, 2), 0.5)])
    target = torch.tensor([[True, False, True]] * 3)
    ab = torch.ones(3, 3, dtype=torch.bool)
    A = torch.tensor([[True, False, False]] * 3)
    goal = Target(target ^ A, A, ab & ~A)  # y = y* XOR A: the target y* = target on every label (A ∪ B = L)
    assert torch.equal(goal.y_star, target) and torch.equal(goal.constrained, ab)
    eps = torch.tensor([0.3, 2.0])
    out = grid_scores(Runtime(model), x, goal, eps, norm)
    for j, e in enumerate(eps.tolist()):
        xa = (x - e * out["d"]).clamp(0, 1)
        torch.testing.assert_close(out["l2"][:, j], (xa - x).flatten(1).norm(dim=1))
        assert torch.equal(out["n_met"][:, j], (((model(xa) >= 0) == target) & ab).sum(1))
    assert (out["l2"][:2, 1] < (2.0 * out["d"][:2]).flatten(1).norm(dim=1)).all()  # clipping did act
