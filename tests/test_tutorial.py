"""mlnb.tutorial: the data cell of notebooks 02-05 (the set X of Sec. IV-E, the draw, the random-case
targets), its display helpers and the tools of the from-scratch comparisons, on a tiny linear model.

The fixture: 40 images ``(3, 4, 4)``, a linear model with five labels (negative biases), labels equal to
its own predictions except on images 0-7 (one label flipped: not in X); image 8 is black, so every
logit is its bias and every label negative: in X but not eligible for the random case.
"""
import pytest
import torch

from mlnb.attacks import fgs
from mlnb.labels import random_case
from mlnb.target import Target
from mlnb.tutorial import draw_attack_set, load_attack_set, on_cpu, per_image_table, target_text, targets_table

pytestmark = pytest.mark.unit

L = 5
NAMES = ("cat", "dog", "sheep", "cow", "bird")


@pytest.fixture(scope="module")
def problem():
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, L)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(L, 48, generator=g) * 0.5)
        model[1].bias.copy_(-0.1 - torch.rand(L, generator=g))
    x = torch.rand(40, 3, 4, 4, generator=g)
    x[8] = 0.0
    with torch.no_grad():
        y = model(x) >= 0
    y[torch.arange(8), torch.arange(8) % L] ^= True  # images 0-7 misclassified
    return model, x, y


def draw(problem, seed=0, n_images=6, **kw):
    model, x, y = problem
    return draw_attack_set(model, x, y, n_images, torch.Generator().manual_seed(seed), **kw)


def test_drawn_images_are_correctly_classified_and_eligible(problem):
    model, x, y = problem
    data = draw(problem)
    rows = [int(i) for i in data.ids]  # default ids are the row numbers
    assert len(rows) == 6 and rows == sorted(rows) and not set(rows) & set(range(9))
    assert torch.equal(data.x, x[rows]) and torch.equal(data.y, y[rows])
    with torch.no_grad():  # an independent forward: H(x) = y on every label
        z = model(data.x)
    assert torch.equal(z >= 0, data.y) and torch.equal(data.logits_clean, z)
    assert torch.equal(data.scores_clean, torch.sigmoid(z))
    assert (data.A & data.y).sum(1).eq(1).all() and (data.A & ~data.y).sum(1).eq(1).all(), "one positive, one negative in A"
    assert torch.equal(data.B, ~data.A), "random case: every other label in B"
    # 0-7 misclassified, 8 (and any other image the model calls all positive or all negative) not eligible
    eligible_in_X = [i for i in range(9, len(x)) if y[i].any() and not y[i].all()]
    assert y[8].sum() == 0 and len(eligible_in_X) >= 20
    assert data.n_in_X == len(eligible_in_X) and data.n_candidates == len(x)
    assert data.summary() == f"{len(eligible_in_X)} of 40 test images are in X and eligible; attacking 6"


def test_draw_order_is_targets_then_permutation(problem):
    """The notebooks' draws before the helper existed: random_case on all candidates, then randperm."""
    model, x, y = problem
    g = torch.Generator().manual_seed(3)
    target = random_case(y, generator=g)
    with torch.no_grad():
        in_X = ((model(x) >= 0) == y).all(1)
    cand = (in_X & target.eligible).nonzero().flatten()
    pick = cand[torch.randperm(len(cand), generator=g)[:6]].sort().values
    g2 = torch.Generator().manual_seed(3)
    data = draw_attack_set(model, x, y, 6, g2)
    assert [int(i) for i in data.ids] == pick.tolist() and torch.equal(data.A, target.A[pick])
    assert torch.equal(torch.rand(4, generator=g), torch.rand(4, generator=g2)), "the generator is left where it was"


def test_same_seed_same_draw(problem):
    a, b = draw(problem, seed=5), draw(problem, seed=5)
    assert a.ids == b.ids and torch.equal(a.A, b.A) and torch.equal(a.B, b.B)
    others = [draw(problem, seed=s) for s in range(6, 12)]
    assert any(o.ids != a.ids or not torch.equal(o.A, a.A) for o in others), "the seed changes the draw"


def test_more_images_than_candidates_gives_every_candidate(problem):
    _, _, y = problem
    data = draw(problem, n_images=1000)
    assert len(data.ids) == data.n_in_X == int((y[9:].any(1) & ~y[9:].all(1)).sum())


def test_ids_and_names_are_carried(problem):
    ids = [f"img{i}" for i in range(40)]
    data = draw(problem, ids=ids, names=NAMES, model_info={"map": 1.0})
    assert all(i.startswith("img") for i in data.ids) and data.names == NAMES and data.model_info == {"map": 1.0}
    table = targets_table(data)
    assert list(table.columns) == ["image", "labels", "target (A)"] and len(table) == 6
    assert all(t.startswith("hide ") and ", show " in t for t in data.targets())


@pytest.mark.parametrize("kwargs, match", [
    ({"n_images": 0}, "n_images"),
    ({"n_images": 2.5}, "n_images"),
    ({"ids": ["a"] * 3}, "one entry per image"),
    ({"names": ("cat",)}, "one entry per image and per label"),
])
def test_bad_arguments_raise_value_error(problem, kwargs, match):
    with pytest.raises(ValueError, match=match):
        draw(problem, **kwargs)


def test_no_candidate_raises_value_error(problem):
    model, x, y = problem
    with pytest.raises(ValueError, match="raise N_CANDIDATES"):
        draw_attack_set(model, x[:9], y[:9], 4, torch.Generator())


@pytest.mark.parametrize("n_images, n_candidates", [(0, 10), (4, 0), (4, -3)])
def test_load_attack_set_checks_before_loading(n_images, n_candidates):
    with pytest.raises(ValueError, match="n_images|n_candidates"):
        load_attack_set("smoke", n_images, n_candidates, torch.Generator())


def test_target_text():
    y = torch.tensor([True, False, True, False, False])
    A = torch.tensor([True, True, False, False, True])
    assert target_text(NAMES, y, A) == "hide cat, show dog, show bird"
    assert target_text(NAMES, y, torch.zeros(L, dtype=torch.bool)) == ""


def test_per_image_table(problem):
    data = draw(problem, names=NAMES)
    res = fgs(data.model, data.x, data.y, data.A, data.B, progress=False, eps_max=0.2, n_eps=3)
    table = per_image_table(res, data, "FGS", "ε")
    assert table.index.names == ["image", "attack"] and len(table) == len(data.ids)
    assert table["ε"].tolist() == res.param.tolist() and table["target"].tolist() == data.targets()
    assert table["success"].tolist() == res.success.tolist()


def test_on_cpu(problem):
    data = draw(problem)
    model, x0, y0, A0, B0 = on_cpu(data, 2)
    assert model is data.model, "a CPU model is not copied"
    assert torch.equal(x0, data.x[2:3]) and torch.equal(A0, data.A[2:3]) and y0.shape == B0.shape == (1, L)
    for bad in (-1, 6, 1.0, True):
        with pytest.raises(ValueError, match="image index"):
            on_cpu(data, bad)


def test_attack_set_target_is_its_images_target(problem):
    """``AttackSet.target``: the drawn images' y, A and B as one Target, which any attack takes as is."""
    data = draw(problem)
    t = data.target
    assert isinstance(t, Target) and len(t) == len(data.ids) and t.eligible.all()
    assert torch.equal(t.y, data.y) and torch.equal(t.A, data.A) and torch.equal(t.B, data.B)
    a = fgs(data.model, data.x, t, progress=False, eps_max=0.2, n_eps=3)
    b = fgs(data.model, data.x, data.y, data.A, data.B, progress=False, eps_max=0.2, n_eps=3)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.success, b.success)
