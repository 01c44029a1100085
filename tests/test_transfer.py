"""Unit tests of mlnb.transfer (ensembles, transfer evaluation), mlnb.surrogates (specs, cache) and the
per-label thresholds of mlnb.models (ThresholdedModel, tune_thresholds), on tiny linear models."""
import dataclasses

import pytest
import torch
from torch import nn

from mlnb import surrogates as S
from mlnb.attacks import fgs, ml_cw
from mlnb.attacks.losses import cw_hinge
from mlnb.metrics import rmsd
from mlnb.models import BACKBONES, ThresholdedModel, tune_thresholds
from mlnb.presets import get_preset
from mlnb.target import Target
from mlnb.transfer import EnsembleModel, craft, evaluate_transfer, stack_target, transfer_attack

pytestmark = pytest.mark.unit

L = 3


class Linear(nn.Module):
    """``(N, 3, 4, 4) -> (N, L)``: ``W flatten(x) + b``."""

    def __init__(self, seed: int, scale: float = 1.0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.fc = nn.Linear(48, L)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(L, 48, generator=g) * scale)
            self.fc.bias.copy_(torch.randn(L, generator=g))

    def forward(self, x):
        return self.fc(x.flatten(1))


class ChannelMeans(nn.Module):
    """Label ``j``'s logit is ``10 (mean of channel j - 0.5)``: decisions readable off the pixels."""

    def forward(self, x):
        return 10 * (x.mean((2, 3)) - 0.5)


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 3, 4, 4, generator=g) * 0.6 + 0.2
    model = Linear(1).eval()
    with torch.no_grad():
        y = model(x) >= 0
    A = torch.zeros_like(y)
    A[:, 0] = True
    B = ~A
    return model, x, Target(y, A, B)


CW = dict(lambda_init=10.0, n_search=2, max_iter=20, lr=5e-2)


# ----------------------------------------------------------------------------- ensembles
def test_ensemble_of_one_is_the_model(data):
    model, x, t = data
    for mode in ("stack", "mean"):
        ens = EnsembleModel([model], mode=mode)
        assert not ens.training and len(ens) == 1
        assert torch.equal(ens(x), model(x))
    assert torch.equal(stack_target(t, 1).y, t.y) and torch.equal(stack_target(t, 1).A, t.A)
    single = ml_cw(model, x, t, progress=False, **CW)
    one = craft("ml_cw", EnsembleModel([model]), x, t, progress=False, **CW)
    assert torch.equal(one.x_adv, single.x_adv) and torch.equal(one.success, single.success)
    one_fgs = craft("fgs", EnsembleModel([model]), x, t, progress=False, eps=0.05)
    assert torch.equal(one_fgs.x_adv, fgs(model, x, t, progress=False, eps=0.05).x_adv)


def test_stacked_cw_hinge_is_the_sum_over_models(data):
    _, x, t = data
    models = [Linear(1), Linear(2), Linear(3)]
    ens = EnsembleModel(models).eval()
    z = ens(x)
    st = stack_target(t, 3)
    assert z.shape == (5, 3 * L) and st.y.shape == (5, 3 * L)
    for space in ("probability", "logit"):
        summed = sum(cw_hinge(m(x), t.y_star, t.constrained, 0.1, space=space) for m in models)
        torch.testing.assert_close(cw_hinge(z, st.y_star, st.constrained, 0.1, space=space), summed)
    # success on the stack = success on every member
    assert torch.equal(st.met(z), torch.stack([t.met(m(x)) for m in models]).all(0))


def test_stacked_fgs_steps_along_the_summed_gradient(data):
    _, x, t = data
    models = [Linear(1), Linear(2)]
    eps = 0.03
    xg = x.clone().requires_grad_(True)
    loss = sum((nn.functional.binary_cross_entropy_with_logits(m(xg), t.y_star.float(), reduction="none")
                * t.constrained).sum() for m in models)
    (g,) = torch.autograd.grad(loss, xg)
    expected = (x - eps * torch.sign(g)).clamp(0, 1)
    res = craft("fgs", EnsembleModel(models).eval(), x, t, progress=False, eps=eps)
    torch.testing.assert_close(res.x_adv, expected)


def test_mean_ensemble_averages_logits(data):
    _, x, _ = data
    a, b = Linear(1), Linear(2)
    torch.testing.assert_close(EnsembleModel([a, b], mode="mean")(x), (a(x) + b(x)) / 2)


def test_ensemble_bad_inputs(data):
    model, x, t = data
    with pytest.raises(TypeError, match="non-empty list"):
        EnsembleModel([])
    with pytest.raises(TypeError, match="non-empty list"):
        EnsembleModel([model, "not a model"])
    with pytest.raises(ValueError, match="mode"):
        EnsembleModel([model], mode="max")
    other = nn.Sequential(nn.Flatten(), nn.Linear(48, 4))
    with pytest.raises(ValueError, match="same L labels"):
        EnsembleModel([model, other])(x)
    with pytest.raises(TypeError, match="Target"):
        stack_target(t.y, 2)
    with pytest.raises(ValueError, match="k"):
        stack_target(t, 0)


# ----------------------------------------------------------------------------- transfer evaluation
def test_evaluate_transfer_closed_form():
    model = ChannelMeans().eval()
    x = torch.full((2, 3, 2, 2), 0.4)  # every logit -1: all negative
    y = torch.zeros(2, 3, dtype=torch.bool)
    A = torch.tensor([[True, True, False], [True, False, False]])
    B = torch.tensor([[False, False, True], [False, True, True]])
    x_adv = x.clone()
    x_adv[0, 0] = 0.6  # image 0: label 0 on (flipped), label 1 not flipped, B kept
    x_adv[1, 0] = 0.6  # image 1: label 0 on (A done), label 1 on (B damaged), label 2 kept
    x_adv[1, 1] = 0.7
    out = evaluate_transfer(model, x, x_adv, Target(y, A, B))
    assert out["success"].tolist() == [False, False]
    torch.testing.assert_close(out["flip_A"], torch.tensor([0.5, 1.0]))
    torch.testing.assert_close(out["damage_B"], torch.tensor([0.0, 0.5]))
    assert out["n_satisfied"].tolist() == [2, 2]
    torch.testing.assert_close(out["rmsd"], rmsd(x, x_adv))
    x_adv[1, 1] = 0.4  # undo the damage: image 1 now succeeds
    assert evaluate_transfer(model, x, x_adv, Target(y, A, B))["success"].tolist() == [False, True]
    # B empty -> NaN damage
    out = evaluate_transfer(model, x, x_adv, Target(y, A, torch.zeros_like(B)))
    assert torch.isnan(out["damage_B"]).all()


@pytest.mark.parametrize("attack,params", [("ml_cw", CW), ("fgs", {"eps_max": 0.1, "n_eps": 5}),
                                           ("rank2", CW)])
def test_transfer_to_the_surrogate_itself_is_white_box(data, attack, params):
    model, x, t = data
    from mlnb.attacks import ATTACKS

    white = ATTACKS[attack](model, x, t, progress=False, **params)
    tr = transfer_attack(attack, model, model, x, t, progress=False, **params)
    assert torch.equal(tr.x_adv, white.x_adv)
    assert torch.equal(tr.on_target["success"], white.success)
    assert torch.equal(tr.on_surrogate["success"], white.success)
    assert not tr.projected.any()
    s = tr.summary()
    assert s["success"] == pytest.approx(float(white.success.float().mean()))
    if white.success.any():
        assert s["transfer_rate"] == 1.0


def test_transfer_to_another_model_and_rmsd_bound(data):
    model, x, t = data
    other = Linear(7).eval()
    tr = transfer_attack("ml_cw", model, other, x, t, progress=False, **CW)
    torch.testing.assert_close(tr.on_target["logits"], other(tr.x_adv))
    bound = 0.5 * float(tr.on_target["rmsd"].max())
    trb = transfer_attack("ml_cw", model, other, x, t, max_rmsd=bound, progress=False, **CW)
    assert float(trb.on_target["rmsd"].max()) <= bound + 1e-4
    assert torch.equal(trb.projected, tr.on_target["rmsd"] > bound)
    # the stacked ensemble is judged on every member
    ens = EnsembleModel([model, other]).eval()
    tre = transfer_attack("ml_cw", ens, model, x, t, progress=False, **CW)
    assert tre.on_surrogate["logits"].shape == (5, 2 * L) and tre.on_target["logits"].shape == (5, L)


def test_transfer_bad_inputs(data):
    model, x, t = data
    with pytest.raises(ValueError, match="attack"):
        craft("pgd", model, x, t)
    with pytest.raises(TypeError, match="Target"):
        craft("ml_cw", model, x, t.y)
    with pytest.raises(ValueError, match="max_rmsd"):
        transfer_attack("ml_cw", model, model, x, t, max_rmsd=-1.0)
    with pytest.raises(ValueError, match="shape"):
        evaluate_transfer(model, x, x[:, :, :2], t)
    with pytest.raises(ValueError, match="L labels"):
        evaluate_transfer(nn.Sequential(nn.Flatten(), nn.Linear(48, 4)).eval(), x, x, t)
    with pytest.raises(ValueError, match="eval"):
        evaluate_transfer(Linear(1).train(), x, x, t)


# ----------------------------------------------------------------------------- per-label thresholds
def test_thresholded_model_decides_at_each_threshold():
    model = Linear(3, scale=0.3).eval()
    x = torch.rand(64, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.2, 0.5, 0.9])
    wrapped = ThresholdedModel(model, t)
    assert not wrapped.training
    z, zt = model(x), wrapped(x)
    assert torch.equal(zt >= 0, torch.sigmoid(z.double()) >= t.double())
    assert torch.equal(ThresholdedModel(model, torch.full((L,), 0.5))(x), z)
    torch.testing.assert_close(torch.sigmoid(zt[:, 1]), torch.sigmoid(z[:, 1]))
    with pytest.raises(ValueError, match="thresholds"):
        ThresholdedModel(model, torch.tensor([0.0, 0.5, 0.5]))
    with pytest.raises(ValueError, match="thresholds"):
        ThresholdedModel(model, torch.tensor([[0.5]]))
    with pytest.raises(TypeError, match="nn.Module"):
        ThresholdedModel(lambda v: v, t)


def test_tune_thresholds_closed_form():
    p = torch.tensor([0.04, 0.27, 0.62, 0.88])
    logits = torch.log(p / (1 - p))[:, None].repeat(1, 3)
    y = torch.tensor([[False, False, False], [False, True, False], [True, True, False], [True, True, True]])
    t = tune_thresholds(logits, y)
    # label 0: F1 = 1 for t in (0.27, 0.62] -> grid 0.30..0.60, closest to 0.5 is 0.50
    # label 1: F1 = 1 for t in (0.04, 0.27] -> 0.05..0.25, closest 0.25
    # label 2: F1 = 1 for t in (0.62, 0.88] -> 0.65..0.85, closest 0.65
    torch.testing.assert_close(t, torch.tensor([0.50, 0.25, 0.65]))
    assert tune_thresholds(logits, y, grid=[0.1, 0.9]).tolist() == pytest.approx([0.1, 0.1, 0.1])
    with pytest.raises(ValueError, match="grid"):
        tune_thresholds(logits, y, grid=[0.0, 0.5])
    with pytest.raises(ValueError, match="same shape|y"):
        tune_thresholds(logits, y[:2])
    with pytest.raises(ValueError, match="logits"):
        tune_thresholds(logits[0], y)


# ----------------------------------------------------------------------------- surrogates
def test_surrogate_specs_differ_in_one_thing_each():
    for name in ("smoke", "default", "paper"):
        preset = get_preset(name)
        specs = S.surrogate_specs(preset)
        assert set(specs) == set(S.SURROGATE_NAMES)
        seed, loss, arch = specs["seed"], specs["loss"], specs["arch"]
        assert seed.backbone == preset.backbone and seed.loss == preset.train["loss"] and seed.seed != 0
        assert dataclasses.replace(loss, name="seed", loss=seed.loss) == seed and loss.loss != seed.loss
        assert arch.backbone in BACKBONES and arch.backbone != preset.backbone and arch.loss == seed.loss


def test_get_surrogate_trains_once_and_caches(monkeypatch, tmp_path):
    import mlnb.data as D

    g = torch.Generator().manual_seed(0)
    labels = torch.rand(40, 10, generator=g) < 0.3
    images = (torch.rand(40, 3, 16, 16, generator=g) * 255).to(torch.uint8)

    def fake_load(name, split, n_examples=None, **kw):
        n = len(labels) if n_examples is None else min(n_examples, len(labels))
        return D.MultiLabelDataset(name, split, labels[:n], [f"l{j}" for j in range(10)], [str(i) for i in range(n)],
                                   images=images[:n])

    monkeypatch.setattr(D, "load_dataset", fake_load)
    monkeypatch.setenv("MLNB_DATA", str(tmp_path))
    preset = dataclasses.replace(get_preset("smoke"), name="tiny", image_size=16, n_train=40, n_test=20,
                                 train={"epochs": 1, "batch_size": 20, "lr": 1e-2, "loss": "eq12", "lam": 0.5})
    out = S.get_surrogates(preset, names=("seed", "loss"), progress=False)
    assert not out["seed"][1]["cached"] and out["loss"][1]["spec"]["loss"] == "bce"
    again, info = S.get_surrogate(preset, "seed", progress=False)
    assert info["cached"] and info["path"] == out["seed"][1]["path"]
    for a, b in zip(again.state_dict().values(), out["seed"][0].state_dict().values()):
        assert torch.equal(a, b)
    assert out["seed"][1]["path"] != out["loss"][1]["path"]
    with pytest.raises(ValueError, match="surrogate"):
        S.get_surrogate(preset, "teacher")


# ----------------------------------------------------------------------------- claims
def test_paired_claim_states():
    from mlnb.transfer import paired_claim

    ones, zeros = torch.ones(20), torch.zeros(20)
    assert paired_claim("s", "c", ones, zeros, n_boot=200)["state"] == "holds"
    assert paired_claim("s", "c", zeros, ones, n_boot=200)["state"] == "does not hold"
    assert paired_claim("s", "c", ones, ones, n_boot=200)["state"] == "does not hold"  # a tie is not a win
    mixed = torch.tensor([1.0, 0.0] * 10)
    row = paired_claim("s", "c", mixed, zeros + 0.5, tests=[(">", -0.3), ("<", 0.3)], n_boot=200)
    assert row["state"] == "holds" and "difference 0.0000" in row["measured"] and "(n = 20)" in row["measured"]
    assert paired_claim("s", "c", mixed, zeros, n_boot=200, tests=[(">", 0.45)])["state"] == "undecided"
    assert paired_claim("s", "c", torch.full((3,), float("nan")), zeros[:3])["state"] == "not testable"
    assert paired_claim("s", "c", ones, n_boot=200, tests=[(">=", 1.0)])["state"] == "holds"
    with pytest.raises(ValueError, match="same images"):
        paired_claim("s", "c", ones, zeros[:5])


def test_ensemble_leaves_its_members_modes_alone_and_takes_a_module_list():
    a = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(4, 2)).eval()
    b = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))  # left in training mode by the caller
    ens = EnsembleModel([a, b])
    assert not a.training and b.training and ens.training  # a keeps eval (its dropout stays off)
    with pytest.raises(ValueError, match="model is in training mode"):  # the ensemble follows b
        fgs(ens, torch.rand(1, 1, 2, 2), torch.tensor([[True] * 4]), torch.tensor([[True, False, False, False]]),
            torch.tensor([[False, True, True, True]]), progress=False)
    ens2 = EnsembleModel(nn.ModuleList([a, b.eval()]))
    assert len(ens2) == 2 and not ens2.training and ens2(torch.rand(3, 1, 2, 2)).shape == (3, 4)


def test_evaluate_transfer_refuses_nan_logits():
    class Nan(nn.Module):
        def forward(self, x):
            return torch.full((x.shape[0], 2), float("nan"))

    y = torch.tensor([[True, False]])
    t = Target(y, torch.tensor([[True, False]]), torch.tensor([[False, True]]))
    x = torch.rand(1, 1, 2, 2)
    with pytest.raises(ValueError, match="contains NaN or Inf"):
        evaluate_transfer(Nan().eval(), x, x, t)
