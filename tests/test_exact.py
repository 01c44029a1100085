"""Exact probability-space arithmetic (mlnb.probability) and the attack losses built on it, against
float64 references of the paper's formulas; saturated labels keep their gradient and never tie."""
import math

import pytest
import torch

from mlnb import attacks
from mlnb import probability as P
from mlnb.attacks.losses import cw_hinge, rank_goal, rank_loss, rank_terms
from mlnb.attacks.rank import ranking_sets
from mlnb.target import Target

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_thread")]

RANK1 = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0])
RANK2 = torch.ones(5)


def _random_logits(n=64, L=7, seed=0, lo=-30.0, hi=30.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, L, generator=g, dtype=torch.float64) * (hi - lo) + lo).float()


def test_gap_and_centered_match_float64_reference():
    z = _random_logits()
    ref = torch.sigmoid(z.double())  # float64: exact to 1e-16 absolute for |z| <= 30
    assert torch.allclose(P.centered(z), ref - 0.5, rtol=1e-12, atol=1e-16)
    a, b = z[:, :, None], z[:, None, :]
    want = ref[:, :, None] - ref[:, None, :]
    assert torch.allclose(P.gap(a, b), want, rtol=1e-9, atol=1e-15)
    want_e = torch.exp(ref[:, :, None]) - torch.exp(ref[:, None, :])
    assert torch.allclose(P.exp_gap(a, b), want_e, rtol=1e-9, atol=1e-14)


def test_distinct_logits_never_tie():
    base = torch.tensor([-80.0, -40.0, -20.0, -1e-20, 1e-20, 0.5, 17.0, 20.0, 40.0, 80.0])
    up = torch.nextafter(base, torch.full_like(base, math.inf))  # the next float32 above each logit
    assert (P.gap(up, base) > 0).all() and (P.gap(base, up) < 0).all()
    assert (P.exp_gap(up, base) > 0).all()
    # float32 sigmoid ties all of these pairs above 17
    assert (torch.sigmoid(up[6:]) == torch.sigmoid(base[6:])).all()


@pytest.mark.parametrize("z0", [20.0, -20.0, 40.0, -40.0, 80.0, -80.0])
def test_gradients_survive_saturation(z0):
    z = torch.tensor([z0], requires_grad=True)
    (g,) = torch.autograd.grad(P.sigmoid(z).sum(), z)
    want = math.exp(-abs(z0)) / (1 + math.exp(-abs(z0))) ** 2
    assert g.item() == pytest.approx(want, rel=1e-5) and g.item() > 0
    # ML-CW's hinge on a label that must cross the threshold, from either side
    for target in (True, False):
        zz = torch.tensor([[z0]], requires_grad=True)
        h = cw_hinge(zz, torch.tensor([[target]]), torch.tensor([[True]]))
        if h.item() > 0:
            (gh,) = torch.autograd.grad(h.sum(), zz)
            assert gh.abs().item() > 0 and torch.sign(gh).item() == (-1 if target else 1)
    # torch.sigmoid's own backward rounds to 0 at |z| >= 17 on the positive side
    if z0 > 0:
        zt = torch.tensor([z0], requires_grad=True)
        (gt,) = torch.autograd.grad(torch.sigmoid(zt).sum(), zt)
        assert gt.item() == 0.0


def test_cw_hinge_matches_float64_reference():
    z = _random_logits(seed=1)
    g = torch.Generator().manual_seed(2)
    target = torch.rand(z.shape, generator=g) < 0.5
    ab = torch.rand(z.shape, generator=g) < 0.7
    s = target.double() * 2 - 1
    for kappa in (0.0, 0.1):
        want = (torch.clamp(kappa - s * (torch.sigmoid(z.double()) - 0.5), min=0) * ab).sum(1)
        assert torch.allclose(cw_hinge(z, target, ab, kappa), want, rtol=1e-12, atol=1e-15)


def _masks(y, A, B):
    m = ranking_sets(Target(y, A, B), "C")
    return m["omega_minus"], m["omega_plus"], m["omega_zero"], m["A1"], m["Bm1"], m["B1"], m["Am1"]


def _rank_reference(z, sets, pairwise=False):
    """The five terms of Eq. (9)/(11) on e^F with F = float64 sigmoid, by loops (independent code)."""
    om, op, oz, A1, Bm1, B1, Am1 = sets
    pairs = [(om, op), (om, oz), (oz, op), (A1, Bm1), (B1, Am1)]
    e = torch.exp(torch.sigmoid(z.double()))
    out = torch.zeros(z.shape[0], 5, dtype=torch.float64)
    for n in range(z.shape[0]):
        for k, (lo, hi) in enumerate(pairs):
            lo_i, hi_i = lo[n].nonzero().flatten().tolist(), hi[n].nonzero().flatten().tolist()
            if not lo_i or not hi_i:
                continue
            if pairwise:
                out[n, k] = sum(max(0.0, float(e[n, a] - e[n, b])) for a in lo_i for b in hi_i) / (len(lo_i) * len(hi_i))
            else:
                out[n, k] = max(0.0, float(max(e[n, lo_i]) - min(e[n, hi_i])))
    return out


@pytest.mark.parametrize("pairwise", [False, True])
def test_rank_terms_match_float64_reference(pairwise):
    z = _random_logits(n=16, L=6, seed=3)
    g = torch.Generator().manual_seed(4)
    y = torch.rand(z.shape, generator=g) < 0.5
    A = torch.rand(z.shape, generator=g) < 0.3
    A[:, 0] = True
    B = ~A & (torch.rand(z.shape, generator=g) < 0.7)
    sets = _masks(y, A, B)
    got = rank_terms(z, *sets, pairwise=pairwise)
    want = _rank_reference(z, sets, pairwise)
    assert torch.allclose(got, want, rtol=1e-6, atol=1e-12)


def test_tie_example_is_not_satisfied():
    # labels in A1, A-1, B1, B-1 with logits [20, 18, 19, -5]: float32 probabilities tie at 1.0
    y = torch.tensor([[True, False, True, False]])
    A = torch.tensor([[True, True, False, False]])
    B = ~A
    z = torch.tensor([[20.0, 18.0, 19.0, -5.0]], requires_grad=True)
    sets = _masks(y, A, B)
    terms = rank_terms(z, *sets)
    assert terms[0, 0] > 0  # the A1 label (20) still ranks above the A-1 label (18)
    assert not rank_goal(z, *sets, RANK1).item() and not rank_goal(z, *sets, RANK2).item()
    (g,) = torch.autograd.grad(rank_loss(terms, RANK1).sum(), z)
    assert g[0, 0] > 0 and g[0, 1] < 0  # push 20 down and 18 up
    # the naive float32 form sees nothing to do
    e = torch.exp(torch.sigmoid(z.detach()))
    assert (e[0, 0] - e[0, 1]).item() == 0.0


def test_rank_goal_is_strict_and_on_logits():
    y = torch.tensor([[True, False]])
    A = torch.tensor([[True, True]])
    B = torch.zeros_like(A)
    sets = _masks(y, A, B)  # A1 = {0} must go below A-1 = {1}
    assert not rank_goal(torch.tensor([[3.0, 3.0]]), *sets, RANK1).item()  # a tie is not a success
    assert rank_goal(torch.tensor([[3.0, 3.0001]]), *sets, RANK1).item()
    assert rank_goal(torch.tensor([[30.0, 30.001]]), *sets, RANK1).item()  # equal in float32 probability


class Linear(torch.nn.Module):
    def __init__(self, W, b):
        super().__init__()
        self.W = torch.nn.Parameter(W)
        self.b = torch.nn.Parameter(b)

    def forward(self, x):
        return x.flatten(1) @ self.W.T + self.b


def test_faithful_ml_cw_flips_a_saturated_label_at_the_closed_form_norm():
    """A linear model whose label to flip sits at logit +20 (float32 probability exactly 1.0); the
    labels to keep use other pixels. With the paper's budget and λ schedule the probability hinge
    flips it at an L2 norm close to the closed-form minimum ``20 / ||w||``."""
    d = 16
    W = torch.zeros(3, d)
    W[0, :8] = 10.0  # label 0: all of its weight on pixels 0-7
    W[1, 8:12] = 4.0
    W[2, 12:] = -4.0
    x = torch.full((1, 1, 4, 4), 0.5)
    b = torch.tensor([20.0 - 40.0, 3.0 - 8.0, -3.0 + 8.0])  # logits at x: [+20, +3, -3]
    model = Linear(W, b).eval()
    with torch.no_grad():
        z = model(x)
    assert torch.allclose(z, torch.tensor([[20.0, 3.0, -3.0]])) and torch.sigmoid(z)[0, 0] == 1.0
    y = z >= 0
    A = torch.tensor([[True, False, False]])
    B = ~A
    res = attacks.ml_cw(model, x, y, A, B, lambda_init=1e5, n_search=10, max_iter=1000, lr=1e-2, progress=False)
    assert res.success.item()
    r = (res.x_adv - x).flatten()
    r_star = 20.0 / W[0].norm()  # move along -w0 until the logit reaches 0
    ratio = (r.norm() / r_star).item()
    # feasible points are never shorter than r*. The bound from the solver: one Adam step moves each
    # pixel by at most lr (1 - tanh^2) / 2 <= lr / 2 in image space, so the logit by at most
    # lr / 2 * ||w0||_1 = 0.4: the best feasible iterate lies within one step past the kink at logit 0,
    # i.e. ||r|| <= (20 + 0.4) / ||w0||_2 (measured: 1.0098)
    step = 1e-2 / 2 * W[0].abs().sum().item()
    assert 1.0 - 1e-4 <= ratio <= 1 + step / 20
    assert r[8:].abs().max() < 1e-3  # the kept labels' pixels are left alone


def _bits(t):
    return t.contiguous().view(torch.int64 if t.dtype == torch.float64 else torch.int32)


def _hard_values(n, seed, dtype):
    """Random values of every scale with exact zeros of both signs, +-1 (the branch edges), saturated and
    infinite entries: where a rewritten backward would first part from autograd's bits."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.tensor([0.1, 1.0, 5.0, 40.0, 300.0], dtype=torch.float64).repeat(n // 5 + 1)[:n]
    v = torch.randn(n, generator=g, dtype=torch.float64) * scales
    special = torch.tensor([0.0, -0.0, 1.0, -1.0, 1 - 1e-16, 30.0, -30.0, 90.0, -90.0, 800.0, math.inf, -math.inf],
                           dtype=torch.float64)
    v[torch.randint(0, n, (n // 4,), generator=g)] = special[torch.randint(0, len(special), (n // 4,), generator=g)]
    return v.to(dtype)


def test_the_hand_written_backwards_are_autograds_to_the_bit():
    """centered_vjp and exp_gap_vjp (the driver's hot loop, no autograd graph) return the values and the
    gradients autograd gives through centered and exp_gap, bit for bit (signed zeros included)."""
    a, b = _hard_values(3000, 0, torch.float64), _hard_values(3000, 1, torch.float64)
    b[:300] = a[:300]  # ties
    grad = _hard_values(3000, 2, torch.float64)
    aa, bb = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    c = P.centered(aa)
    value, vjp = P.centered_vjp(a)
    assert torch.equal(_bits(value), _bits(c.detach()))
    assert torch.equal(_bits(vjp(grad)), _bits(torch.autograd.grad(c, aa, grad)[0]))
    e = P.exp_gap(aa, bb)
    value, vjp = P.exp_gap_vjp(a, b)
    assert torch.equal(_bits(value), _bits(e.detach()))
    for got, want in zip(vjp(grad), torch.autograd.grad(e, (aa, bb), grad)):
        assert torch.equal(_bits(got), _bits(want))


@pytest.mark.parametrize("space", ["probability", "logit"])
@pytest.mark.parametrize("kappa", [0.0, 0.2])
def test_cw_step_is_cw_hinge_and_its_autograd_gradient_to_the_bit(space, kappa):
    """The driver's ML-CW step: cw_hinge's value and, for a per-image λ, the gradient of sum λ h w.r.t. the
    float32 logits that autograd gives, bit for bit (clamp edges, zeros, saturated and infinite logits)."""
    from mlnb.attacks.losses import cw_step

    z = _hard_values(40 * 9, 3, torch.float32).view(40, 9)
    g = torch.Generator().manual_seed(4)
    target, ab = torch.rand(40, 9, generator=g) < 0.5, torch.rand(40, 9, generator=g) < 0.7
    lam = torch.exp(torch.randn(40, generator=g, dtype=torch.float64) * 6)
    zz = z.clone().requires_grad_(True)
    want = cw_hinge(zz, target, ab, kappa, space=space)
    (want_g,) = torch.autograd.grad((lam * want).sum(), zz)
    h, vjp = cw_step(z, target, ab, kappa, space=space)
    assert torch.equal(_bits(h), _bits(want.detach()))
    assert torch.equal(_bits(vjp(lam)), _bits(want_g))
