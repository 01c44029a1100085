"""The ART door (mlnb.art_door) against the real adversarial-robustness-toolbox: a PyTorchClassifier around a
small multi-label CNN, one ``generate`` call with the label set wanted, and exactly mlnb's own result;
channels-last classifiers and ART preprocessing; clear errors; the module imports without ART."""
import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mlnb import art_door, attacks

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_thread")]
needs_art = pytest.mark.skipif(not art_door.ART_AVAILABLE, reason="adversarial-robustness-toolbox is not installed "
                               "(pip install mlnb[art]; the dev extra installs it)")

L, SIZE = 4, 16
FAST = {"fgs": {}, "fg": {"eps": 0.05}, "ml_cw": {"lambda_init": 10.0, "n_search": 2, "max_iter": 20},
        "ml_dp": {"max_iter": 10}, "rank1": {"lambda_init": 10.0, "n_search": 2, "max_iter": 20},
        "rank2": {"lambda_init": 10.0, "n_search": 2, "max_iter": 20}}


class ChannelsLast(torch.nn.Module):
    """A model that takes (N, H, W, C) images, as a channels-last ART classifier feeds them."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x.permute(0, 3, 1, 2))


class Standardised(torch.nn.Module):
    """``net((x - mean) / std)``: what an ART classifier with ``preprocessing=(mean, std)`` computes."""

    def __init__(self, net, mean, std):
        super().__init__()
        self.net, self.mean, self.std = net, mean, std

    def forward(self, x):
        return self.net((x - self.mean) / self.std)


def classifier(model, **kwargs):
    from art.estimators.classification import PyTorchClassifier
    kwargs.setdefault("clip_values", (0.0, 1.0))
    return PyTorchClassifier(model, loss=torch.nn.BCEWithLogitsLoss(), input_shape=(3, SIZE, SIZE), nb_classes=L,
                             device_type="cpu", **kwargs)


@pytest.fixture(scope="module")
def case():
    torch.manual_seed(0)  # a conv net whose logits sit near 0 and follow the image: every attack moves it
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, stride=2, padding=1), torch.nn.Tanh(), torch.nn.Flatten(),
                                torch.nn.Linear(6 * (SIZE // 2) ** 2, L)).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(5, 3, SIZE, SIZE, generator=g)
    with torch.no_grad():
        y = model(x) >= 0
    A = torch.zeros_like(y)
    A[:, 0] = True
    A[1::2, 2] = True
    B = torch.zeros_like(y)
    B[:, 1] = True
    return model, x, y, A, B


@needs_art
@pytest.mark.parametrize("name", list(attacks.ATTACKS))
def test_generate_equals_mlnbs_own_call(case, name):
    model, x, y, A, B = case
    atk = art_door.ART_ATTACKS[name](classifier(model), verbose=False, **FAST[name])
    x_adv = atk.generate(x.numpy(), (y ^ A).numpy().astype(np.float32), mask=(A | B).numpy())
    ref = attacks.ATTACKS[name](model, x, y, A, B, progress=False, **FAST[name])
    assert isinstance(x_adv, np.ndarray) and x_adv.dtype == np.float32 and x_adv.shape == tuple(x.shape)
    assert np.array_equal(x_adv, ref.x_adv.numpy())
    assert torch.equal(atk.last_result.success, ref.success)
    assert not np.array_equal(x_adv, x.numpy())  # the identity is not vacuous: the attack moved the images


@needs_art
def test_default_mask_constrains_every_label_and_y_clean_replaces_the_predictions(case):
    model, x, y, A, B = case
    atk = art_door.MultiLabelFGS(classifier(model), verbose=False)
    y_star = (y ^ A).numpy()
    ref = attacks.fgs(model, x, y, A, ~A, progress=False)  # mask=None: every label is in A or B
    assert np.array_equal(atk.generate(x.numpy(), y_star), ref.x_adv.numpy())
    y_true = y.clone()
    y_true[:, 3] = ~y_true[:, 3]  # clean labels other than the predictions: A and B follow them
    A2, B2 = (A | B) & (y ^ A != y_true), (A | B) & (y ^ A == y_true)
    ref2 = attacks.fgs(model, x, y_true, A2, B2, progress=False)
    out = atk.generate(x.numpy(), y_star, mask=(A | B).numpy(), y_clean=y_true.numpy())
    assert np.array_equal(out, ref2.x_adv.numpy())
    built = art_door.MultiLabelFGS(art_door.art_classifier(model, (3, SIZE, SIZE), L), verbose=False)
    assert np.array_equal(built.generate(x.numpy(), y_star), ref.x_adv.numpy())  # the classifier an ART user builds
    t = atk.target(x.numpy(), y_star, mask=(A | B).numpy(), y_clean=y_true.numpy())
    assert torch.equal(t.y, y_true) and torch.equal(t.A, A2) and torch.equal(t.B, B2)


@needs_art
def test_channels_last_and_preprocessing_are_part_of_the_attacked_function(case):
    model, x, y, A, B = case
    y_star, mask = (y ^ A).numpy(), (A | B).numpy()
    params = FAST["ml_dp"]
    atk = art_door.MultiLabelDeepFool(classifier(ChannelsLast(model).eval(), channels_first=False), verbose=False,
                                      **params)
    x_adv = atk.generate(x.permute(0, 2, 3, 1).numpy(), y_star, mask=mask)
    ref = attacks.ml_dp(model, x, y, A, B, progress=False, **params)
    assert x_adv.shape == (5, SIZE, SIZE, 3)
    assert np.array_equal(x_adv, ref.x_adv.permute(0, 2, 3, 1).numpy())

    mean, std = 0.5, 0.25
    atk = art_door.MultiLabelDeepFool(classifier(model, preprocessing=(mean, std)), verbose=False, **params)
    normed = Standardised(model, mean, std).eval()
    with torch.no_grad():
        y_n = normed(x) >= 0
    A_n = (A | B) & (y_n != torch.from_numpy(y_star))
    B_n = (A | B) & ~A_n
    keep = A_n.any(1)  # images whose normalised predictions already satisfy y* have nothing to flip
    got = atk.generate(x[keep].numpy(), y_star[keep.numpy()], mask=mask[keep.numpy()])
    ref = attacks.ml_dp(normed, x[keep], y_n[keep], A_n[keep], B_n[keep], progress=False, **params)
    assert int(keep.sum()) >= 3 and not np.array_equal(got, x[keep].numpy())
    assert np.array_equal(got, ref.x_adv.numpy())


@needs_art
def test_repr_set_params_and_targeted(case):
    model = case[0]
    atk = art_door.MultiLabelCW(classifier(model), lambda_init=10.0, verbose=False)
    text = repr(atk)
    assert text.startswith("MultiLabelCW(estimator=PyTorchClassifier, targeted=True, verbose=False, lambda_init=10.0")
    assert "max_iter=1000" in text and "hinge_space='probability'" in text
    assert atk.targeted
    atk.set_params(max_iter=5)
    assert atk.max_iter == 5
    with pytest.raises(ValueError, match="targeted"):
        atk.targeted = False
        atk.set_params(verbose=False)


@needs_art
def test_bad_classifiers_params_and_targets_raise_clear_errors(case):
    model, x, y, A, B = case
    with pytest.raises(TypeError, match="PyTorchClassifier"):
        art_door.MultiLabelCW(model)
    with pytest.raises(ValueError, match=r"clip_values.*\[0, 1\]"):
        art_door.MultiLabelFGS(classifier(model, clip_values=(0.0, 255.0)))
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['max_iters'\]"):
        art_door.MultiLabelCW(classifier(model), max_iters=3)
    atk = art_door.MultiLabelFGS(classifier(model), verbose=False)
    xs, y_star = x.numpy(), (y ^ A).numpy()
    with pytest.raises(ValueError, match="y is required"):
        atk.generate(xs)
    with pytest.raises(ValueError, match=r"y must have shape \(5, 4\).*not class indices"):
        atk.generate(xs, np.zeros(5, dtype=np.int64))
    with pytest.raises(ValueError, match="0/1"):
        atk.generate(xs, np.full((5, L), 0.7, dtype=np.float32))
    with pytest.raises(ValueError, match="x must be a batch of images"):
        atk.generate(xs[0], y_star[:1])
    with pytest.raises(ValueError, match=r"images \[0, 1, 2, 3, 4\] are already in the state y asks for"):
        atk.generate(xs, y.numpy())
    with pytest.raises(ValueError, match="x"):
        atk.generate(xs * 2, y_star)  # pixels outside [0, 1]


@needs_art
def test_set_params_values_shapes_dtypes_and_one_label_models(case):
    import copy

    model, x, y, A, B = case
    atk = art_door.MultiLabelCW(classifier(model), verbose=False)
    with pytest.raises(TypeError, match="ml_cw.max_iter must be int, got str 'abc'"):
        atk.set_params(max_iter="abc")  # refused here, not later inside generate
    fgs = art_door.MultiLabelFGS(classifier(model), verbose=False)
    with pytest.raises(ValueError, match=r"images of shape \(3, 8, 8\) but the classifier was built for input_shape="
                                         r"\(3, 16, 16\)"):
        fgs.generate(x[:, :, :8, :8].numpy(), (y ^ A).numpy())
    # a float64 model gets float64 images (they used to be cast to float32) and gives mlnb's own float64 result
    wide = copy.deepcopy(model).double()
    xs = x.double().numpy()
    got = art_door.MultiLabelFGS(classifier(wide), verbose=False).generate(xs, (y ^ A).numpy())
    ref = attacks.fgs(wide, x.double(), y, A, ~A, progress=False)
    assert got.dtype == np.float64 and np.array_equal(got, ref.x_adv.numpy())
    with pytest.raises(ValueError, match="nb_classes >= 2, got num_labels=1"):
        art_door.art_classifier(torch.nn.Linear(3, 1).eval(), (3,), 1)


def test_nothing_but_the_door_imports_art():
    """``import mlnb`` and every other module work without ART: only art_door.py names it."""
    importers = []
    for path in sorted(Path(art_door.__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            if any(n == "art" or n.startswith("art.") for n in names):
                importers.append(path.name)
    assert sorted(set(importers)) == ["art_door.py"]


def test_without_art_the_module_imports_and_construction_names_the_extra():
    code = ("import sys; sys.modules['art'] = None\n"
            "import mlnb.art_door as d\n"
            "assert not d.ART_AVAILABLE\n"
            "try:\n    d.MultiLabelCW(object())\nexcept ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "pip install mlnb[art]" in out.stdout
