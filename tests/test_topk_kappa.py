"""TkML-AP's margin ``κ`` and already-successful images (mlnb.attacks.topk): stopping and the choice of the
returned iterate require the goal to hold by ``κ`` (``κ = 0``: exactly the plain top-k rule, checked bit for
bit against that rule written out here), and an image already there is returned as given at zero cost."""
import pytest
import torch

from mlnb.attacks.topk import _project, topk_hinge, topk_targeted, topk_targets, topk_universal, topk_untargeted
from mlnb.attacks.topk_metrics import topk_margin, topk_success

from linear_model import Linear

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_thread")]

KW = dict(eps=3.0, max_iter=60, lr=0.05, progress=False)


def _setup(n=8, seed=0):
    """A 6-label linear model on (3, 4, 4) images; ``y`` = the two top labels of each clean image."""
    g = torch.Generator().manual_seed(seed)
    model = Linear(torch.randn(6, 48, generator=g) * 0.3, torch.randn(6, generator=g)).eval()
    x = 0.2 + 0.6 * torch.rand(n, 3, 4, 4, generator=g)
    with torch.no_grad():
        z = model(x)
    y = torch.zeros_like(z, dtype=torch.bool).scatter_(1, z.topk(2, dim=1).indices, True)
    return model, x, y, z


def _plain_rule(model, x, y, k, targets, stop_early, *, eps, max_iter, lr, progress):
    """The search with the plain top-k success rule (the kernel before the margin rule), for κ = 0."""
    w = torch.atanh((2 * x - 1) * (1 - 1e-6))
    m = torch.zeros_like(x, requires_grad=True)
    best, best_l2 = x.clone(), torch.full((x.shape[0],), torch.inf)
    iters, active = torch.zeros(x.shape[0], dtype=torch.int64), torch.ones(x.shape[0], dtype=torch.bool)
    for _ in range(max_iter):
        xa = x + _project((torch.tanh(w + m) + 1) / 2 - x, eps)
        logits = model(xa)
        (grad,) = torch.autograd.grad(topk_hinge(logits, y, k, targets, 0.0).sum(), m)
        with torch.no_grad():
            ok = topk_success(logits, y, k, targets) & active
            l2 = (xa - x).flatten(1).norm(dim=1)
            imp = ok & (l2 < best_l2)
            best, best_l2 = torch.where(imp.view(-1, 1, 1, 1), xa, best), torch.where(imp, l2, best_l2)
            iters += active.long()
            if stop_early:
                active &= ~ok
            m -= lr * grad * active.view(-1, 1, 1, 1)
        if not bool(active.any()):
            break
    return best.clamp(0, 1), iters


def _mixed():
    """Images 0-2 start successful (their one true label is the lowest), the others do not."""
    model, x, y, z = _setup()
    y[:3] = torch.zeros_like(y[:3]).scatter_(1, z[:3].argmin(1, keepdim=True), True)
    return model, x, y, z


@pytest.mark.parametrize("k", [1, 2])
def test_kappa_zero_is_the_plain_rule_bit_for_bit(k):
    model, x, y, z = _mixed()
    pre = topk_success(z, y, k)
    assert pre[:3].all() and not pre[3:].any()
    res = topk_untargeted(model, x, y, k=k, **KW)
    ref, it = _plain_rule(model, x, y, k, None, True, **KW)
    assert torch.equal(res.x_adv[3:], ref[3:]) and torch.equal(res.iterations[3:], it[3:])
    t = topk_targets(z, y, 2, "worst")
    res = topk_targeted(model, x, y, t, k=k + 1, **KW)
    ref, it = _plain_rule(model, x, y, k + 1, t, False, **KW)
    assert torch.equal(res.x_adv, ref) and torch.equal(res.iterations, it)


def test_kappa_is_reached_by_the_returned_examples():
    model, x, y, z = _setup()
    for kappa in (0.5, 1.0):
        res = topk_untargeted(model, x, y, k=1, kappa=kappa, **KW)
        found = res.extras["found"]
        assert found.sum() >= 4, "the test needs images that reach the margin"
        margin = topk_margin(res.logits, y, 1)
        assert torch.equal(margin, res.extras["margin"])
        assert (margin[found] >= kappa).all()
        assert torch.equal(res.x_adv[~found], x[~found])  # never reached: the clean image
        assert torch.equal(res.success, topk_success(res.logits, y, 1))  # success stays the plain rule
    plain = topk_untargeted(model, x, y, k=1, **KW)
    assert (plain.extras["margin"] < 0.5).all()  # at κ = 0 each image stops at its first success
    t = topk_targets(z, y, 1, "best")
    res = topk_targeted(model, x, y, t, k=2, kappa=0.5, **KW)
    found = res.extras["found"]
    assert found.sum() >= 4 and (topk_margin(res.logits, y, 2, t)[found] >= 0.5).all()


def test_kappa_changes_the_untargeted_and_the_universal_results():
    model, x, y, z = _setup()
    big = dict(KW, eps=10.0, max_iter=150)
    r1 = topk_untargeted(model, x, y, k=1, kappa=1.0, **big)
    r5 = topk_untargeted(model, x, y, k=1, kappa=2.0, **big)
    assert r5.extras["found"].any() and (r5.extras["margin"][r5.extras["found"]] >= 2.0).all()
    assert not torch.equal(r1.x_adv, r5.x_adv)
    uni = dict(k=1, eps=3.0, radius=2.0, passes=2, chunk=3, max_iter=60, lr=0.05, progress=False)
    d0 = topk_universal(model, x, y, kappa=0.0, **uni).extras["delta"]
    d5 = topk_universal(model, x, y, kappa=0.5, **uni).extras["delta"]
    assert not torch.equal(d0, d5)


def test_already_successful_images_are_returned_unchanged_at_zero_cost():
    model, x, y, z = _mixed()
    t = topk_targets(z, y, 1, "best")  # images 0-2: their best negative is their top label
    for res, pre in ((topk_untargeted(model, x, y, k=1, **KW), topk_success(z, y, 1)),
                     (topk_targeted(model, x, y, t, k=2, **KW), topk_success(z, y, 2, t))):
        assert pre[:3].all() and not pre[3:].any()
        assert torch.equal(res.x_adv[pre], x[pre]) and (res.iterations[pre] == 0).all()
        assert res.success[pre].all() and res.extras["found"][pre].all() and (res.extras["l2"][pre] == 0).all()
        assert (res.iterations[~pre] > 0).all()


def test_already_successful_uses_the_margin():
    model, x, y, z = _mixed()
    margin = topk_margin(z, y, 1)[:3]
    kappa = float(margin.median())  # one clean margin below κ, one at it, one above
    res = topk_untargeted(model, x, y, k=1, kappa=kappa, **KW)
    below = margin < kappa
    assert below.any() and (~below).any()
    assert torch.equal(res.x_adv[:3][~below], x[:3][~below]) and (res.iterations[:3][~below] == 0).all()
    assert (res.iterations[:3][below] > 0).all()
