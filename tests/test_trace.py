"""The search attacks' public switches ``trace`` and ``early_abort`` (ML-CW, Rank I, Rank II), on the
fixture of tests/test_attacks.py.

``trace=True`` records every step of every image (``extras["trace"]``, a long table of
:data:`mlnb.attacks._state.TRACE_FIELDS`) and changes nothing else; ``early_abort=False`` makes every λ
run take all ``max_iter`` steps (the plain algorithm), so every image not already in its target state
takes exactly ``n_search * max_iter`` steps."""
from __future__ import annotations

import pytest
import torch

from mlnb import attacks
from mlnb.attacks._state import TRACE_FIELDS
from test_attacks import SEARCH, tiny_problem

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_thread")]

SEARCHERS = ["ml_cw", "rank1", "rank2"]
N_SEARCH, MAX_ITER = 3, 20
PARAMS = {**SEARCH, "n_search": N_SEARCH, "max_iter": MAX_ITER}
EPS64 = torch.finfo(torch.float64).eps


@pytest.fixture(scope="module")
def problem():
    """Six images of the fixture of tests/test_attacks.py (random case); image 4 is made to start in its
    target state (its clean labels are set to the model's predictions XOR A)."""
    model, x, y, A, B = tiny_problem("random", 6)
    with torch.no_grad():
        y[4] = (model(x[4:5])[0] >= 0) ^ A[4]
    return model, x, y, A, B


@pytest.fixture(scope="module")
def traced(problem):
    """``{name: (result with trace=True, result with trace=False)}``, computed once."""
    model, x, y, A, B = problem
    return {name: (attacks.ATTACKS[name](model, x, y, A, B, progress=False, trace=True, **PARAMS),
                   attacks.ATTACKS[name](model, x, y, A, B, progress=False, **PARAMS)) for name in SEARCHERS}


def _rows(trace: dict, i: int) -> dict:
    """Image ``i``'s rows of the trace, in the order recorded (steps are appended in time order)."""
    keep = trace["image"] == i
    return {k: v[keep] for k, v in trace.items()}


@pytest.mark.parametrize("name", SEARCHERS)
def test_trace_has_its_fields_as_one_long_table(traced, name):
    res, plain = traced[name]
    trace = res.extras["trace"]
    assert tuple(trace) == TRACE_FIELDS
    assert set(TRACE_FIELDS) == {"image", "iteration", "run", "lam", "loss", "distortion", "hinge", "n_met"}
    T = int(res.iterations.sum())
    assert T > 0
    for k, v in trace.items():  # one row per step taken by an image, on the CPU
        assert isinstance(v, torch.Tensor) and v.shape == (T,) and v.device.type == "cpu", k
    for k in ("loss", "distortion", "hinge", "lam"):
        assert trace[k].dtype == torch.float64, k
    assert "trace" not in plain.extras  # off by default


@pytest.mark.parametrize("name", SEARCHERS)
def test_each_images_iterations_run_from_one_without_gaps(problem, traced, name):
    model, x, y, A, B = problem
    res, _ = traced[name]
    trace = res.extras["trace"]
    assert set(trace["image"].tolist()) <= set(range(x.shape[0]))
    assert res.iterations[4] == 0 and not (trace["image"] == 4).any()  # already in its target state: no step
    for i in range(x.shape[0]):
        r = _rows(trace, i)
        n = int(res.iterations[i])
        assert torch.equal(r["iteration"], torch.arange(1, n + 1, dtype=r["iteration"].dtype)), i


@pytest.mark.parametrize("name", SEARCHERS)
def test_loss_is_distortion_plus_lambda_times_hinge(traced, name):
    trace = traced[name][0].extras["trace"]
    want = trace["distortion"] + trace["lam"] * trace["hinge"]
    assert ((trace["loss"] - want).abs() <= 2 * EPS64 * want.abs()).all()
    assert (trace["distortion"] >= 0).all() and (trace["hinge"] >= 0).all() and (trace["lam"] > 0).all()
    assert torch.isfinite(trace["loss"]).all()


@pytest.mark.parametrize("name", SEARCHERS)
def test_runs_never_go_back_and_stay_below_n_search(problem, traced, name):
    model, x, y, A, B = problem
    res, _ = traced[name]
    trace = res.extras["trace"]
    n_constraints = (A | B).sum(1)
    for i in range(x.shape[0]):
        r = _rows(trace, i)
        if not len(r["run"]):
            continue
        assert r["run"][0] == 0, i
        steps = r["run"].diff()
        assert ((steps == 0) | (steps == 1)).all(), i  # non-decreasing, one λ run after the other
        assert (r["run"] < N_SEARCH).all(), i
        for run in r["run"].unique().tolist():
            in_run = r["run"] == run
            assert 1 <= int(in_run.sum()) <= MAX_ITER, (i, run)
            assert r["lam"][in_run].eq(r["lam"][in_run][0]).all(), (i, run)  # λ moves only between runs
            # every run restarts from the clean image: its first step has (almost) no distortion
            assert r["distortion"][in_run][0] < 1e-9, (i, run)
        assert ((r["n_met"] >= 0) & (r["n_met"] <= n_constraints[i])).all(), i


def test_ml_cw_hinge_is_zero_exactly_where_every_constraint_is_met(problem, traced):
    """Eq. (5) with κ = 0: each term is ``max(0, -s (F - 0.5))``, 0 once its constraint holds, so the hinge
    of a step is 0 where ``n_met`` counts every constraint of A ∪ B and positive elsewhere."""
    model, x, y, A, B = problem
    trace = traced["ml_cw"][0].extras["trace"]
    met_all = trace["n_met"] == (A | B).sum(1)[trace["image"]]
    assert met_all.any() and (~met_all).any()
    assert (trace["hinge"][met_all] == 0).all()
    assert (trace["hinge"][~met_all] > 0).all()


@pytest.mark.parametrize("name", SEARCHERS)
def test_trace_changes_nothing_else(traced, name):
    res, plain = traced[name]
    assert torch.equal(res.x_adv, plain.x_adv)  # bit for bit
    for f in ("iterations", "success", "n_satisfied", "logits"):
        assert torch.equal(getattr(res, f), getattr(plain, f)), f
    assert torch.equal(res.param.isnan(), plain.param.isnan())
    assert torch.equal(res.param.nan_to_num(), plain.param.nan_to_num())


@pytest.mark.parametrize("name", ["ml_cw", "rank2"])
def test_trace_of_a_chunked_call_names_each_image_by_its_row_in_the_call(problem, traced, name):
    """With ``batch_size=2`` each chunk's images are numbered from the chunk's start: every image keeps its
    own steps, the same as in one call (images never mix)."""
    model, x, y, A, B = problem
    whole = traced[name][0]
    chunked = attacks.ATTACKS[name](model, x, y, A, B, progress=False, trace=True, batch_size=2, **PARAMS)
    assert torch.equal(chunked.iterations, whole.iterations)
    for i in range(x.shape[0]):
        a, b = _rows(whole.extras["trace"], i), _rows(chunked.extras["trace"], i)
        for k in ("iteration", "run", "n_met"):
            assert torch.equal(a[k], b[k]), (i, k)
        assert torch.allclose(a["loss"], b["loss"], rtol=1e-5, atol=1e-9), i


@pytest.mark.parametrize("name", SEARCHERS)
def test_trace_and_early_abort_must_be_bools(problem, name):
    model, x, y, A, B = problem
    for bad in ({"trace": "yes"}, {"trace": 1}, {"early_abort": 0}, {"early_abort": None}):
        with pytest.raises(TypeError, match="must be bools"):
            attacks.ATTACKS[name](model, x[:1], y[:1], A[:1], B[:1], progress=False, **{**PARAMS, **bad})


@pytest.mark.parametrize("name", SEARCHERS)
def test_without_early_abort_every_image_takes_the_whole_budget(problem, name):
    """``early_abort=False``: ``n_search * max_iter`` steps for every image, except the one that starts in its
    target state (0 steps). With it on (the default) successful runs stop early, so the switch matters."""
    model, x, y, A, B = problem
    kw = dict(progress=False, lambda_init=30.0, n_search=2, max_iter=20, lr=0.05)
    off = attacks.ATTACKS[name](model, x, y, A, B, early_abort=False, **kw)
    want = torch.full_like(off.iterations, 2 * 20)
    want[4] = 0
    assert torch.equal(off.iterations, want)
    on = attacks.ATTACKS[name](model, x, y, A, B, **kw)
    assert on.iterations[4] == 0 and (on.iterations <= want).all()
    assert int(on.iterations.sum()) < int(want.sum())
    # the trace agrees: every run of every image has max_iter rows
    traced = attacks.ATTACKS[name](model, x, y, A, B, early_abort=False, trace=True, **kw).extras["trace"]
    for i in range(x.shape[0]):
        runs = _rows(traced, i)["run"]
        assert runs.tolist() == ([] if i == 4 else [0] * 20 + [1] * 20), i
