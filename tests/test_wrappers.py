"""The torchattacks-style classes of mlnb.wrappers: the same kernels, so exactly the functional call's result
(every attack, a Target or y, A, B), settings checked by name when the class is made, a repr that prints
the attack and every setting in effect."""
import inspect

import pytest
import torch

from mlnb import attacks
from mlnb.target import Target
from mlnb.wrappers import FG, FGS, MLCW, MLDP, WRAPPERS, Attack, RankI, RankII

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_thread")]

# small settings that keep each call well under a second on 6 tiny images
FAST = {"fgs": {}, "fg": {"eps": 0.05}, "ml_cw": {"lambda_init": 10.0, "n_search": 2, "max_iter": 30},
        "ml_dp": {"max_iter": 10}, "rank1": {"lambda_init": 10.0, "n_search": 2, "max_iter": 30},
        "rank2": {"lambda_init": 10.0, "n_search": 2, "max_iter": 30, "select": "constraints"}}


@pytest.fixture(scope="module")
def case():
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 5)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(5, 48, generator=g) * 0.3)
        model[1].bias.zero_()
    x = torch.rand(6, 3, 4, 4, generator=g)
    with torch.no_grad():
        y = model(x) >= 0
    A = torch.zeros_like(y)
    A[:, 0] = True
    A[::2, 3] = True
    B = torch.zeros_like(y)
    B[:, 1] = True
    return model, x, Target(y, A, B)


def test_one_class_per_attack_and_the_classes_name_their_kernel():
    assert set(WRAPPERS) == set(attacks.ATTACKS)
    assert [FGS.name, FG.name, MLCW.name, MLDP.name, RankI.name, RankII.name] == list(attacks.ATTACKS)
    for cls in WRAPPERS.values():
        assert "Shape:" in cls.__doc__ and "Examples::" in cls.__doc__ and "{shape}" not in cls.__doc__
        assert "Introduced in notebooks/" in cls.__doc__


@pytest.mark.parametrize("name", list(attacks.ATTACKS))
def test_class_equals_the_functional_call(case, name):
    model, x, t = case
    atk = WRAPPERS[name](model, progress=False, **FAST[name])
    ref = attacks.ATTACKS[name](model, x, t, progress=False, **FAST[name])
    assert torch.equal(atk(x, t), ref.x_adv)
    res = atk.run(x, t.y, t.A, t.B)  # the three masks and the Target are the same call
    assert torch.equal(res.x_adv, ref.x_adv) and torch.equal(res.success, ref.success)
    assert torch.equal(res.logits, ref.logits) and torch.equal(res.iterations, ref.iterations)
    assert torch.allclose(res.param, ref.param, equal_nan=True)


def test_the_attack_moves_the_images(case):
    """A check that the identity above is not vacuous: FGS's images differ from the clean ones."""
    model, x, t = case
    res = FGS(model, progress=False).run(x, t)
    assert not torch.equal(res.x_adv, x) and bool(res.success.any())


def test_repr_prints_the_attack_and_every_setting(case):
    model, _, _ = case
    atk = MLCW(model, progress=False, lambda_init=10.0, max_iter=30)
    text = repr(atk)
    assert text.startswith("MLCW(model_name=Sequential, device=cpu, attack=ml_cw, targeted=True")
    assert "lambda_init=10.0" in text and "max_iter=30" in text
    defaults = {k for k, p in inspect.signature(attacks.ml_cw).parameters.items()
                if p.kind is p.KEYWORD_ONLY and k not in ("generator", "progress")}
    assert set(atk.settings) == defaults
    assert atk.settings["n_search"] == 10 and atk.settings["max_iter"] == 30  # a default, an override
    assert "hinge_space='probability'" in text


def test_unknown_settings_raise_at_construction_naming_the_valid_ones(case):
    model, _, _ = case
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['max_iters'\].*max_iter"):
        MLCW(model, max_iters=10)
    with pytest.raises(ValueError, match="unknown parameter"):
        FGS(model, lambda_init=1.0)  # an ML-CW setting given to FGS


def test_bad_construction_arguments_raise_clear_errors(case):
    model, _, _ = case
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        MLDP(lambda x: x)
    with pytest.raises(TypeError, match="progress must be a bool"):
        RankI(model, progress="no")
    with pytest.raises(TypeError, match="generator must be None or a torch.Generator"):
        RankII(model, generator=0)
    with pytest.raises(TypeError, match="base class"):
        Attack(model)


def test_bad_values_and_targets_raise_at_the_call(case):
    model, x, t = case
    with pytest.raises(ValueError, match="eps"):
        FG(model, eps=-1.0, progress=False)(x, t)
    with pytest.raises(TypeError, match="pass the target"):
        FGS(model, progress=False)(x, t.y)  # masks missing
