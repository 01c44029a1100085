"""TkML-AP (mlnb.attacks.topk) and the one definition of top-k success (mlnb.attacks.topk_metrics), on
hand-made logits and a tiny linear model where the minimal L2 perturbation that swaps two labels is
known: ``|g_a - g_b| / ||w_a - w_b||_2``."""
import pytest
import torch

from mlnb.attacks.topk import topk_hinge, topk_targeted, topk_targets, topk_universal, topk_untargeted
from mlnb.attacks.topk_metrics import in_topk, topk_report, topk_success

from linear_model import Linear

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_thread")]


W4 = [[1.0, -1.0, 0.5, 0.0], [0.0, 1.0, 1.0, -1.0], [0.5, 0.5, -1.0, 1.0], [-1.0, 0.0, 0.5, 0.5]]
B4 = [1.0, 0.2, 0.0, -0.3]


def _setup(n=4, seed=0):
    model = Linear(W4, B4).eval()
    g = torch.Generator().manual_seed(seed)
    x = 0.3 + 0.4 * torch.rand(n, 1, 2, 2, generator=g)
    with torch.no_grad():
        z = model(x)
    y = torch.zeros_like(z, dtype=torch.bool).scatter_(1, z.argmax(1, keepdim=True), True)  # true = top label
    return model, x, y, z


def test_topk_success_definition_and_ties():
    z = torch.tensor([[2.0, 1.0, 1.0, 0.0]])
    assert in_topk(z, 1).tolist() == [[True, False, False, False]]
    assert in_topk(z, 2).tolist() == [[True, True, True, False]]  # a tie at the k-th place: both in
    y = torch.tensor([[False, False, True, False]])
    assert not topk_success(z, y, 2)  # the tied true label counts as in the top 2
    assert topk_success(z, y, 1)
    t = torch.tensor([[False, True, False, True]])
    assert not topk_success(z, y, 3, targets=t) and topk_success(z, y, 4, targets=t)


def test_hinge_is_zero_exactly_on_success_with_a_margin():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(200, 6, generator=g)
    y = torch.rand(200, 6, generator=g) < 0.3
    y[:, 0] = True
    y[:, 3:] = False  # three negatives at least
    for k in (1, 2, 3):
        ok = topk_success(z, y, k)
        assert torch.equal(topk_hinge(z, y, k, kappa=1e-4) == 0, ok)
        t = topk_targets(z, y, k, "random", generator=g)
        assert torch.equal(topk_hinge(z, y, k, t, kappa=1e-4) == 0, topk_success(z, y, k, t))


def test_target_strategies():
    z = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0]])
    y = torch.tensor([[True, False, False, False, False]])
    assert topk_targets(z, y, 2, "best").tolist() == [[False, True, True, False, False]]
    assert topk_targets(z, y, 2, "worst").tolist() == [[False, False, False, True, True]]
    r1 = topk_targets(z.repeat(20, 1), y.repeat(20, 1), 2, "random", generator=torch.Generator().manual_seed(0))
    r2 = topk_targets(z.repeat(20, 1), y.repeat(20, 1), 2, "random", generator=torch.Generator().manual_seed(0))
    assert torch.equal(r1, r2) and (r1.sum(1) == 2).all() and not (r1 & y).any()
    assert len(set(map(tuple, r1.tolist()))) > 1  # random: not the same pair for all 20 rows
    with pytest.raises(ValueError, match="fewer than k=5"):
        topk_targets(z, y, 5, "best")
    with pytest.raises(ValueError, match="strategy"):
        topk_targets(z, y, 1, "easiest")


def test_untargeted_top1_on_a_linear_model():
    model, x, y, z = _setup()
    res = topk_untargeted(model, x, y, k=1, eps=5.0, max_iter=200, lr=0.05, progress=False)
    assert res.success.all() and torch.equal(res.success, topk_success(res.logits, y, 1))
    W = torch.tensor(W4)
    a = z.argmax(1)
    # the cheapest swap of the top label with any other label, in L2 (linear: closed form)
    need = torch.stack([((z[i, a[i]] - z[i]) / (W[a[i]] - W).norm(dim=1).clamp(min=1e-9))
                        .masked_fill(torch.arange(4) == a[i], torch.inf).min() for i in range(4)])
    assert (res.extras["l2"] >= need - 1e-5).all()
    assert (res.extras["l2"] <= 5.0 + 1e-5).all() and res.x_adv.device == x.device
    rep = topk_report(res.logits, y, x, res.x_adv, ks=(1, 2))
    assert rep["success@1"] == 1.0 and 0 <= rep["success@2"] <= 1.0


def test_batch_equals_one_by_one():
    model, x, y, z = _setup(n=3, seed=1)
    t = topk_targets(z, y, 2, "worst")
    full = topk_targeted(model, x, y, t, k=2, eps=5.0, max_iter=60, lr=0.05, progress=False)
    for i in range(3):
        one = topk_targeted(model, x[i:i + 1], y[i:i + 1], t[i:i + 1], k=2, eps=5.0, max_iter=60, lr=0.05,
                            progress=False)
        assert torch.allclose(one.x_adv, full.x_adv[i:i + 1], atol=1e-6)
    assert torch.equal(full.success, topk_success(full.logits, y, 2, t))


def test_eps_bounds_the_perturbation_and_universal_shares_one_delta():
    model, x, y, z = _setup(n=4, seed=2)
    res = topk_untargeted(model, x, y, k=1, eps=0.05, max_iter=30, lr=0.05, progress=False)
    assert (res.extras["l2"] <= 0.05 + 1e-5).all()
    uni = topk_universal(model, x, y, k=1, eps=5.0, radius=0.8, passes=2, chunk=2, max_iter=50, lr=0.05,
                         progress=False)
    d = uni.extras["delta"]
    assert d.shape == (1, 1, 2, 2) and d.norm().item() <= 0.8 + 1e-5
    assert torch.allclose(uni.x_adv, (x + d).clamp(0, 1)) and 1 <= len(uni.extras["fooling_rate"]) <= 2


def test_bad_inputs_raise_clear_errors():
    model, x, y, z = _setup()
    with pytest.raises(ValueError, match="k must lie"):
        topk_untargeted(model, x, y, k=4, progress=False)
    with pytest.raises(ValueError, match="at least one true label"):
        topk_untargeted(model, x, torch.zeros_like(y), k=1, progress=False)
    with pytest.raises(ValueError, match="between 1 and k=1"):
        topk_targeted(model, x, y, ~y, k=1, progress=False)
    with pytest.raises(ValueError, match="eps"):
        topk_untargeted(model, x, y, k=1, eps=0.0, progress=False)
