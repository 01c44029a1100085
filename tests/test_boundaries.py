"""Inputs at the public boundary that an earlier suite let through: half-precision metrics past float16's
integers, Target indexing by a scalar, NumPy integers, models without an input gradient or with a zero one,
and a transfer target model that cannot take the images. Each test states what used to happen."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from mlnb import attacks, defenses, metrics, purify, transfer
from mlnb.case_study import case_study_sets
from mlnb.labels import random_case, reduce_label
from mlnb.target import Target
from mlnb.validate import check_label_matrix
from mlnb.wrappers import MLCW

pytestmark = pytest.mark.unit


def _linear(num_in: int = 48, num_labels: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(num_in, num_labels)).eval()


def _problem(n: int = 2):
    x = torch.rand(n, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    y = torch.zeros(n, 3, dtype=torch.bool)
    y[:, 1] = True
    A = torch.zeros_like(y)
    A[:, 0] = True
    return x, y, A, ~A


# ----------------------------------------------------------------------------- metrics
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_ranking_metrics_count_pairs_past_their_integers(dtype):
    # 300 x 300 pairs: the counts used to be cast to float16 (inf past 65504), giving NaN / 0.0
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 600, generator=g)
    y = torch.rand(3, 600, generator=g) < 0.5
    for fn in (metrics.ranking_loss, metrics.instance_auc, metrics.average_precision):
        ref = fn(z.to(dtype).double(), y)
        got = fn(z.to(dtype), y)
        assert got.dtype == dtype and bool(torch.isfinite(got).all())
        assert torch.allclose(got.double(), ref, atol=1e-2), fn.__name__
    rl, auc = metrics.ranking_loss(z.to(dtype), y).double(), metrics.instance_auc(z.to(dtype), y).double()
    assert torch.allclose(rl + auc, torch.ones(3, dtype=torch.float64), atol=1e-2)


def test_half_precision_label_map_counts_images_past_float16():
    g = torch.Generator().manual_seed(0)
    s, y = torch.rand(70_000, 2, generator=g), torch.rand(70_000, 2, generator=g) < 0.3
    half = metrics.model_quality(s.half(), y)["label_map"]
    assert math.isclose(half, metrics.model_quality(s.half().double(), y)["label_map"], rel_tol=1e-3)


def test_kendall_tau_of_a_row_with_a_nan_score_is_nan():
    # sign(nan) is 0: a NaN used to count as a tie and give a finite tau (the driver's selection key)
    y_tau = torch.tensor([[-2, -1, 0, 1, 2]])
    s = torch.tensor([[-2.0, -1.0, math.nan, 1.0, 2.0], [-2.0, -1.0, 0.0, 1.0, 2.0]])
    out = metrics.tau_b_kernel(s, y_tau.expand(2, 5))
    assert math.isnan(float(out[0])) and float(out[1]) == 1.0


def test_kendall_tau_refuses_an_unsigned_criterion():
    with pytest.raises(ValueError, match="signed integer"):  # -2 would wrap to 254
        metrics.kendall_tau_b(torch.rand(1, 3), torch.tensor([[0, 1, 2]], dtype=torch.uint8))


def test_predict_refuses_logits():
    with pytest.raises(ValueError, match="probabilities"):
        metrics.predict(torch.tensor([[0.3, 2.0]]))


# ----------------------------------------------------------------------------- labels and targets
@pytest.mark.parametrize("rows", [np.int64(0), torch.tensor(0), None, (slice(None), 0), torch.zeros(2, 2).long()])
def test_a_target_is_indexed_along_its_image_axis_only(rows):
    # used to build a Target with 1-D fields that failed later, in repr or met
    t = random_case(torch.tensor([[True, True, False], [True, False, False]]), torch.Generator().manual_seed(0))
    with pytest.raises(TypeError, match="image axis"):
        t[rows]
    assert t[[0]].y.shape == (1, 3) and t[np.array([1])].y.shape == (1, 3) and t[t.eligible].y.shape == (2, 3)


def test_target_met_names_a_non_tensor():
    t = Target(*_problem()[1:])
    with pytest.raises(ValueError, match="got ndarray"):
        t.met(np.zeros((2, 3)))


def test_strategies_name_a_seed_given_as_generator():
    with pytest.raises(TypeError, match=r"torch.Generator\(\).manual_seed\(0\)"):
        random_case(torch.tensor([[True, False]]), generator=0)


def test_label_index_accepts_numpy_and_tensor_integers_and_checks_names():
    y = torch.tensor([[True, True, False], [True, False, False]])
    for j in (np.int64(0), torch.tensor(0)):
        assert torch.equal(reduce_label(y, j).A, reduce_label(y, 0).A)
    with pytest.raises(ValueError, match="one name per label"):
        reduce_label(y, "b", names=["a", "b"])
    with pytest.raises(TypeError, match="label index"):
        reduce_label(y, 0.0)


@pytest.mark.parametrize("y, hint", [(torch.ones(2, 3), "A > 0.5 for 0/1"), (torch.tensor([[-1, 1]]), "pass A > 0")])
def test_label_matrix_hint_names_the_argument(y, hint):
    with pytest.raises(ValueError, match=hint):
        check_label_matrix(y, "A")


def test_case_study_refuses_scores_of_another_shape_or_nan():
    y_row = torch.tensor([True, True, False, False])
    for scores in (torch.rand(3), torch.tensor([0.1, math.nan, 0.2, 0.3])):
        with pytest.raises(ValueError, match="scores_row"):
            case_study_sets(y_row, scores)


# ----------------------------------------------------------------------------- the attacks' model probe
class _Detached(nn.Module):
    """A linear model whose forward detaches its input: the logits still carry a graph, through the weights."""

    def __init__(self):
        super().__init__()
        self.net = _linear()

    def forward(self, x):
        return self.net(x.detach())


@pytest.mark.parametrize("name", ["fgs", "ml_cw", "ml_dp", "rank2", "mla_lp"])
def test_attacks_refuse_a_model_whose_graph_misses_the_input(name):
    # the logits required grad through the weights, so the check passed and autograd failed later, raw
    x, y, A, B = _problem()
    with pytest.raises(ValueError, match="do not depend differentiably on x"):
        getattr(attacks, name)(_Detached().eval(), x, y, A, B, progress=False)


def test_attacks_refuse_a_defense_without_bpda_and_warn_about_a_zero_gradient():
    x, y, A, B = _problem()
    m = _linear()
    with pytest.raises(ValueError, match="DefendedModel"):
        attacks.ml_cw(defenses.DefendedModel(m, purify.jpeg, bpda=False), x, y, A, B, progress=False)
    quantised = defenses.DefendedModel(m, lambda t: purify.bit_depth(t, 4), bpda=False)
    with pytest.warns(UserWarning, match="zero gradient"):
        attacks.fgs(quantised, x, y, A, B, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # through BPDA the gradient is the model's: no warning
        attacks.fgs(defenses.DefendedModel(m, lambda t: purify.bit_depth(t, 4), bpda=True), x, y, A, B, progress=False)


def test_wrappers_refuse_numpy_numbers_when_built_as_the_attack_does_when_called():
    with pytest.raises(TypeError, match="must be a Python int"):
        MLCW(_linear(), max_iter=np.int64(5))


# ----------------------------------------------------------------------------- transfer and defenses
def test_transfer_checks_the_target_model_before_crafting(monkeypatch):
    x, y, A, B = _problem()
    crafted = []
    monkeypatch.setattr(transfer, "craft", lambda *a, **k: crafted.append(1))
    with pytest.raises(ValueError, match="shape"):  # 5 labels where the target has 3
        transfer.transfer_attack("fgs", _linear(), _linear(num_labels=5), x, Target(y, A, B), progress=False)
    with pytest.raises(RuntimeError):  # the target model takes other images
        transfer.transfer_attack("fgs", _linear(), _linear(num_in=12), x, Target(y, A, B), progress=False)
    assert not crafted


class _Pair(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = _linear()

    def forward(self, x):
        z = self.net(x)
        return z, z


def test_evaluate_defense_names_a_bad_defense_and_a_tuple_output():
    x, y, _, _ = _problem()
    with pytest.raises(TypeError, match=r"make_defense\('jpeg'\)"):
        defenses.evaluate_defense(_linear(), "jpeg", x, y)
    with pytest.raises(ValueError, match="model returned tuple"):
        defenses.evaluate_defense(_Pair().eval(), None, x, y)


def test_histogram_overlap_refuses_nan_and_an_empty_range():
    a = torch.tensor([0.2, 0.3])
    with pytest.raises(ValueError, match="NaN"):
        defenses.histogram_overlap(torch.tensor([math.nan, 0.2]), a)
    with pytest.raises(ValueError, match="low < high"):
        defenses.histogram_overlap(a, a, value_range=(1.0, 0.0))


# ----------------------------------------------------------------------------- presets, runner plan, utilities
def test_a_preset_keyword_misspelt_fails_before_training():
    from mlnb import experiments as E
    from mlnb.presets import get_preset

    with pytest.raises(ValueError, match="unknown parameter"):  # used to surface only when the attack ran
        E.resolve_params(get_preset("default", attacks={"ml_cw": {"max_iters": 5}}), ["ml_cw"], {})


@pytest.mark.parametrize("override, problem", [
    ({"image_size": 32, "backbone": "inception_v3"}, "minimum 75"), ({"pretrained": "no"}, "must be a bool"),
    ({"train": {"epoch": 3}}, "unknown train setting"), ({"attacks": [("ml_cw", {})]}, "must be dicts")])
def test_a_custom_preset_is_checked_when_made(override, problem):
    from mlnb.presets import get_preset

    with pytest.raises((ValueError, TypeError), match=problem):
        get_preset("default", **override)


def test_a_preset_is_a_copy_and_its_caps_are_checked():
    from mlnb.presets import PRESETS, get_preset

    p = get_preset("default")
    p.attacks["ml_cw"]["max_iter"] = 1  # used to change the registry for the rest of the process
    assert PRESETS["default"].attacks["ml_cw"]["max_iter"] != 1
    for cap in (-3, 0, math.nan):
        with pytest.raises(ValueError, match="caps"):
            p.attack_params("ml_cw", caps={"max_iter": cap})


def test_run_in_chunks_refuses_a_zero_batch_and_takes_no_images():
    from mlnb.utils import run_in_chunks

    with pytest.raises(ValueError, match="batch_size"):  # used to loop forever
        run_in_chunks(3, 0, torch.device("cpu"), lambda sl: {"x": torch.zeros(sl.stop - sl.start)})
    assert run_in_chunks(0, 4, torch.device("cpu"), lambda sl: {}) == {}  # used to raise IndexError


def test_paper_table_three_of_one_data_set_and_side_by_side_that_matches_nothing():
    from mlnb.paper.tables import paper_table, side_by_side

    assert list(paper_table(3, "voc2007").index) == ["voc2007"]  # used to raise "Index must be a MultiIndex"
    ours = paper_table(4, "voc2007").droplevel("dataset")
    with pytest.raises(ValueError, match="no row of ours matches"):  # levels swapped: used to give all-NaN columns
        side_by_side(ours.swaplevel(0, 1), paper_table(4))
    with pytest.raises(ValueError, match="index levels"):
        side_by_side(ours, paper_table(3))


def test_seeds_hashes_devices_and_roots():
    from mlnb.utils import param_hash, resolve_device, results_root, set_seed

    assert torch.equal(torch.rand(2, generator=set_seed(np.int64(5))), torch.rand(2, generator=set_seed(5)))
    with pytest.raises(ValueError, match="at most"):
        set_seed(2**64)
    hashes = {param_hash({"a": v}) for v in (math.nan, math.inf, -math.inf, None)}
    assert len(hashes) == 4  # to_jsonable writes all four as null: they used to key the same run
    with pytest.raises(ValueError, match="collide"):
        param_hash({1: "x", "1": "y"})
    assert resolve_device("CPU") == torch.device("cpu") and resolve_device(torch.device("cpu")).type == "cpu"
    with pytest.raises(ValueError, match="not a valid device"):
        resolve_device("cpu:x")


def test_results_and_data_roots_expand_home_and_ignore_empty(monkeypatch, tmp_path):
    from mlnb.utils import data_root, project_root, results_root

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("MLNB_RESULTS", "~/r")
    assert results_root() == tmp_path / "r"  # used to be a folder literally named "~"
    monkeypatch.setenv("MLNB_DATA", "")
    assert data_root() == project_root() / "data"  # used to be the working directory
