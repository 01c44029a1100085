"""Multi-label adversarial training (mlnb.robust_training): the inner maximisation against closed forms on a
linear model, the threat model's ball, the generator, the training loop, the cache and bad inputs."""
from __future__ import annotations

import itertools

import pytest
import torch

import mlnb.robust_training as rt
from mlnb.robust_training import adversarial_examples, adversarial_train, get_robust_model
from mlnb.training import eq12_loss

pytestmark = pytest.mark.unit


class Linear(torch.nn.Module):
    def __init__(self, d=12, L=3, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = torch.nn.Parameter(torch.randn(L, d, generator=g))
        self.b = torch.nn.Parameter(torch.randn(L, generator=g))

    def forward(self, x):
        return x.flatten(1) @ self.w.t() + self.b


def _batch(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = 0.3 + 0.4 * torch.rand(n, 3, 2, 2, generator=g)  # interior: no clipping to [0, 1] within eps = 0.05
    y = torch.rand(n, 3, generator=g) < 0.5
    y[:, 0], y[:, 1] = True, False  # every row and column has both signs (Eq. 12's terms are non-zero)
    y[0, 2], y[1, 2] = True, False
    return x, y


def test_one_step_without_random_start_is_fgsm_on_the_loss():
    model, (x, y) = Linear(), _batch()
    eps = 0.05
    # BCE: d loss / d x_n = sum_i (sigmoid(z_ni) - y_ni) w_i / (n L): its sign and direction in closed form
    z = model(x).detach()
    grad = ((torch.sigmoid(z) - y.float()) @ model.w.detach()).view_as(x)
    out = adversarial_examples(model, x, y, norm="linf", eps=eps, step_size=eps, random_start=False, loss="bce")
    assert torch.allclose(out, x + eps * grad.sign(), atol=1e-6)
    out2 = adversarial_examples(model, x, y, norm="l2", eps=eps, step_size=eps, random_start=False, loss="bce")
    unit = grad / grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    assert torch.allclose(out2, x + eps * unit, atol=1e-6)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_examples_stay_in_the_ball_and_raise_the_eq12_loss(norm):
    model, (x, y) = Linear(), _batch()
    eps = 0.05 if norm == "linf" else 0.2
    g = torch.Generator().manual_seed(0)
    out = adversarial_examples(model, x, y, norm=norm, eps=eps, steps=5, generator=g)
    d = (out - x).flatten(1)
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    assert (size <= eps + 1e-6).all() and out.min() >= 0 and out.max() <= 1
    with torch.no_grad():
        assert eq12_loss(model(out), y) > eq12_loss(model(x), y)
        # PGD from a random start ends above the random start alone
        start = adversarial_examples(model, x, y, norm=norm, eps=eps, step_size=1e-12,
                                     generator=torch.Generator().manual_seed(0))
        assert eq12_loss(model(out), y) > eq12_loss(model(start), y)


def test_random_start_follows_the_generator_and_clips_to_images():
    model, (x, y) = Linear(), _batch()
    x = x.clone()
    x[0] = 1.0  # a saturated image: the start and the step are clipped to [0, 1]
    a = adversarial_examples(model, x, y, eps=0.1, generator=torch.Generator().manual_seed(1))
    b = adversarial_examples(model, x, y, eps=0.1, generator=torch.Generator().manual_seed(1))
    c = adversarial_examples(model, x, y, eps=0.1, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.max() <= 1 and a.min() >= 0


class _Tiny:
    """The two things adversarial_train reads of a MultiLabelDataset: len() and tensors(indices)."""

    def __init__(self, n=40):
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(n, 3, 2, 2, generator=g)
        self.y = self.x.flatten(1)[:, :3] > 0.5

    def __len__(self):
        return len(self.x)

    def tensors(self, idx):
        return self.x[idx], self.y[idx]


def test_adversarial_train_runs_and_lowers_the_adversarial_loss():
    model, data = Linear(), _Tiny()
    ticks = itertools.count()
    hist = adversarial_train(model, data, epochs=6, batch_size=20, lr=0.05, norm="l2", eps=0.1, progress=False,
                             generator=torch.Generator().manual_seed(0), clock=lambda: float(next(ticks)))
    assert not model.training
    assert hist["epochs_run"] == 6 and hist["steps"] == 12 and hist["norm"] == "l2" and hist["eps"] == 0.1
    assert hist["step_size"] == pytest.approx(0.125)  # 1.25 eps for one step (Wong et al.)
    assert hist["loss"][-1] < hist["loss"][0]
    assert hist["train_seconds"] == next(ticks) - 1


def test_get_robust_model_trains_once_then_loads(tmp_path, monkeypatch):
    from mlnb.presets import get_preset
    from mlnb.utils import data_root

    if (data_root() / "animals").is_dir():  # reuse the built composites: only the models' cache is fresh
        (tmp_path / "animals").symlink_to(data_root() / "animals", target_is_directory=True)
    monkeypatch.setenv("MLNB_DATA", str(tmp_path))
    monkeypatch.setitem(rt.RECIPES, "smoke", {"epochs": 1, "batch_size": 50, "lr": 1e-3})
    preset = get_preset("smoke", n_train=100, n_test=40, train={"epochs": 1, "batch_size": 50, "lr": 1e-2,
                                                                "loss": "eq12", "lam": 0.5})
    model, info = get_robust_model(preset, norm="linf", progress=False)
    assert not model.training and not info["cached"] and info["history"]["steps"] == 2
    assert info["threat_model"]["norm"] == "linf" and "map" in info["test_metrics"]
    assert info["base_weights_sha256"] != info["weights_sha256"]
    again, info2 = get_robust_model(preset, norm="linf", progress=False)
    assert info2["cached"] and info2["path"] == info["path"]
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(model(x), again(x))
    # the threat model is part of the cache key (training replaced by a stub: only the key is under test)
    stub = {"train_seconds": 0.0, "step_size": 0.0}
    monkeypatch.setattr(rt, "adversarial_train", lambda model, data, **kw: {**stub, "eps": kw["eps"]})
    _, info3 = get_robust_model(preset, norm="linf", eps=2 / 255, progress=False)
    assert info3["path"] != info["path"] and not info3["cached"] and info3["history"]["eps"] == 2 / 255


def test_bad_inputs_raise_clear_errors():
    model, (x, y) = Linear(), _batch()
    with pytest.raises(ValueError, match="unknown norm 'l1'"):
        adversarial_examples(model, x, y, norm="l1")
    with pytest.raises(ValueError, match="eps"):
        adversarial_examples(model, x, y, eps=-0.1)
    with pytest.raises(ValueError, match="steps"):
        adversarial_examples(model, x, y, steps=0)
    with pytest.raises(ValueError, match="bool"):
        adversarial_examples(model, x, y.float())
    with pytest.raises(ValueError, match="one label row per image"):
        adversarial_examples(model, x, y[:2])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        adversarial_examples(model, x * 3, y)
    with pytest.raises(ValueError, match="unknown loss"):
        adversarial_train(model, _Tiny(), epochs=1, batch_size=4, lr=0.1, loss="hinge")
    with pytest.raises(ValueError, match="empty"):
        adversarial_train(model, _Tiny(0), epochs=1, batch_size=4, lr=0.1)
    with pytest.raises(ValueError, match="unknown norm"):
        get_robust_model("smoke", norm="l0")
