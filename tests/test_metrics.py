"""mlnb.metrics against scikit-learn / scipy on tied inputs, degenerate rows, and a hand-worked attack.

The ranking loss counts a tied (positive, negative) pair as 1/2 (the instance AUC's rule), where
sklearn's ``label_ranking_loss`` counts it as 1: it is compared with sklearn on tie-free rows and with
:func:`half_tie_ranking_loss`, an independent pair-by-pair reference, on rows with ties."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from scipy.stats import kendalltau
from sklearn import metrics as skm

from mlnb import metrics as M
from mlnb.labels import kendall_criterion, random_case

pytestmark = pytest.mark.unit
TOL = 1e-6


def tied_inputs(seed, n=64, L=7, levels=4, p=0.4):
    """Scores quantised to a few levels (many ties) and random labels with some degenerate rows."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, levels, (n, L), generator=g).double() / (levels - 1)
    y = torch.rand(n, L, generator=g) < p
    y[0] = False  # no positive
    y[1] = True  # no negative
    scores[2] = 0.5  # constant scores
    return scores, y


def proper_rows(y):
    return (y.any(1) & (~y).any(1)).numpy()


def half_tie_ranking_loss(s_row, y_row) -> float:
    """Reference ranking loss of one row, pair by pair in plain Python: a (positive, negative) pair
    ordered wrongly costs 1, a tied one 1/2; 0.0 without a positive or a negative."""
    s_row, y_row = s_row.tolist(), y_row.tolist()
    pos = [v for v, t in zip(s_row, y_row) if t]
    neg = [v for v, t in zip(s_row, y_row) if not t]
    if not pos or not neg:
        return 0.0
    cost = sum(1.0 if p < n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return cost / (len(pos) * len(neg))


def has_tied_pair(s_row, y_row) -> bool:
    pos, neg = set(s_row[y_row].tolist()), set(s_row[~y_row].tolist())
    return bool(pos & neg)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ranking_loss_matches_sklearn_without_ties_and_half_ties_otherwise(seed):
    s, y = tied_inputs(seed)
    ours = M.ranking_loss(s, y)
    n_tied = 0
    for i in range(len(s)):  # row by row, so every row agrees, not only the mean
        if has_tied_pair(s[i], y[i]):
            n_tied += 1
            ref = half_tie_ranking_loss(s[i], y[i])
            assert ref < skm.label_ranking_loss(y[i:i + 1].numpy(), s[i:i + 1].numpy())  # sklearn: a tie is 1
        else:
            ref = skm.label_ranking_loss(y[i:i + 1].numpy(), s[i:i + 1].numpy())
        assert abs(float(ours[i]) - ref) < TOL
    assert 0 < n_tied < len(s)  # both kinds of rows were checked


@pytest.mark.parametrize("seed", [0, 1])
def test_ranking_loss_equals_sklearn_on_untied_scores(seed):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(50, 8, generator=g, dtype=torch.float64) * 10  # continuous logits: no ties
    y = torch.rand(50, 8, generator=g) < 0.4
    ref = skm.label_ranking_loss(y.numpy(), s.numpy())
    assert abs(float(M.ranking_loss(s, y).mean()) - ref) < TOL


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_auc_is_one_minus_ranking_loss_with_ties(seed):
    g = torch.Generator().manual_seed(seed)
    n, L = 200, 9
    s = torch.randint(-3, 4, (n, L), generator=g).float() * 7.5  # logits on a coarse grid: many ties
    y = torch.rand(n, L, generator=g) < 0.5
    both = y.any(1) & (~y).any(1)
    s, y = s[both], y[both]
    tied = torch.tensor([has_tied_pair(a, b) for a, b in zip(s, y)])
    assert tied.sum() > n // 4  # the identity is checked on rows with ties
    assert torch.allclose(M.instance_auc(s, y), 1 - M.ranking_loss(s, y), atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_average_precision_matches_sklearn_lrap(seed):
    s, y = tied_inputs(seed)
    ours = M.average_precision(s, y)
    for i in range(len(s)):
        ref = skm.label_ranking_average_precision_score(y[i:i + 1].numpy(), s[i:i + 1].numpy())
        assert abs(float(ours[i]) - ref) < TOL
    assert abs(float(ours.mean()) - skm.label_ranking_average_precision_score(y.numpy(), s.numpy())) < TOL


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_instance_auc_matches_roc_auc_per_row(seed):
    s, y = tied_inputs(seed)
    ours = M.instance_auc(s, y).numpy()
    ok = proper_rows(y)
    assert np.isnan(ours[~ok]).all()
    for i in np.flatnonzero(ok):
        assert abs(ours[i] - skm.roc_auc_score(y[i].numpy(), s[i].numpy())) < TOL


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kendall_tau_b_matches_scipy(seed):
    s, _ = tied_inputs(seed, levels=3)
    g = torch.Generator().manual_seed(100 + seed)
    y_tau = torch.randint(-2, 3, s.shape, generator=g).to(torch.int8)
    y_tau[3] = 1  # constant criterion
    ours = M.kendall_tau_b(s, y_tau).numpy()
    ref = np.array([kendalltau(a, b, variant="b").statistic for a, b in zip(s.numpy(), y_tau.numpy())])
    assert (np.isnan(ours) == np.isnan(ref)).all() and np.isnan(ours[[2, 3]]).all()
    assert np.nanmax(np.abs(ours - ref)) < TOL


def test_kendall_tau_b_float32_and_criterion():
    g = torch.Generator().manual_seed(5)
    y = torch.rand(40, 10, generator=g) < 0.3
    y[:, 0], y[:, 1] = True, False
    t = random_case(y, generator=g)
    A, B = t.A, t.B
    y_tau = kendall_criterion(y, A, B)
    s = (torch.rand(40, 10, generator=g) * 5).floor() / 4
    ours = M.kendall_tau_b(s.float(), y_tau).numpy()
    ref = [kendalltau(a, b, variant="b").statistic for a, b in zip(s.numpy(), y_tau.numpy())]
    assert np.allclose(ours, ref, atol=TOL)


@pytest.mark.parametrize("seed", [0, 1])
def test_f1_and_hamming_match_sklearn(seed):
    s, y = tied_inputs(seed)
    pred = M.predict(s)
    pred[4], y[4] = False, False  # both empty: an exact match
    f1 = M.instance_f1(pred, y)
    ref = skm.f1_score(y.numpy(), pred.numpy(), average="samples", zero_division=1)
    assert abs(float(f1.mean()) - ref) < TOL and float(f1[4]) == 1.0
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(y.shape, generator=g) < 0.5
    mask[5] = False
    ham = M.hamming_loss(pred, y, mask)
    assert math.isnan(float(ham[5]))
    for i in range(len(y)):
        cols = mask[i].numpy()
        if cols.any():
            ref = skm.hamming_loss(y[i].numpy()[cols], pred[i].numpy()[cols])
            assert abs(float(ham[i]) - ref) < TOL


def test_predict_threshold_is_inclusive():
    s = torch.tensor([[0.4999, 0.5, 0.9]])
    assert M.predict(s).tolist() == [[False, True, True]]


@pytest.mark.parametrize("seed", [0, 1])
def test_model_quality_matches_sklearn(seed):
    s, y = tied_inputs(seed, n=80, L=6)
    y[:, 5] = False  # a label with no positive image
    q = M.model_quality(s, y)
    pred = (s >= 0.5).numpy()
    yn, sn = y.numpy(), s.numpy()
    assert abs(q["hamming"] - skm.hamming_loss(yn, pred)) < TOL
    assert abs(q["macro_f1"] - skm.f1_score(yn, pred, average="macro", zero_division=0)) < TOL
    assert abs(q["micro_f1"] - skm.f1_score(yn, pred, average="micro", zero_division=0)) < TOL
    ref_rl = np.mean([half_tie_ranking_loss(a, b) for a, b in zip(s, y)])  # tied inputs: half ties
    assert abs(q["ranking_loss"] - ref_rl) < TOL
    assert abs(q["map"] - skm.label_ranking_average_precision_score(yn, sn)) < TOL
    with pytest.warns(UserWarning):
        ref = skm.average_precision_score(yn, sn, average="macro")
    assert abs(q["label_map"] - ref) < TOL


def test_degenerate_rows_documented_values():
    s = torch.tensor([[0.2, 0.7, 0.9], [0.5, 0.5, 0.5], [0.1, 0.6, 0.3]])
    y = torch.tensor([[False] * 3, [True] * 3, [True, False, False]])
    assert M.ranking_loss(s, y).tolist()[:2] == [0.0, 0.0]
    assert M.average_precision(s, y).tolist()[:2] == [1.0, 1.0]
    auc = M.instance_auc(s, y)
    assert torch.isnan(auc[:2]).all() and float(auc[2]) == 0.0
    tau = M.kendall_tau_b(s, torch.tensor([[0, 1, 2], [0, 1, 2], [0, 0, 0]], dtype=torch.int8))
    assert math.isnan(float(tau[1])) and math.isnan(float(tau[2])) and float(tau[0]) == pytest.approx(1.0)
    # constant scores: ties everywhere -> ranking loss 1/2 (sklearn: 1), AUC 1/2
    s2, y2 = torch.full((1, 4), 0.3), torch.tensor([[True, False, True, False]])
    assert float(M.ranking_loss(s2, y2)) == 0.5 and float(M.instance_auc(s2, y2)) == 0.5


def test_rmsd_scale():
    x = torch.full((2, 3, 5, 5), 0.5)
    assert torch.allclose(M.rmsd(x, x + 1 / 255), torch.ones(2), atol=1e-4)
    x_adv = x.clone()
    x_adv[1, 0, 0, 0] += 10 / 255  # one entry of 75 changed by 10 levels
    assert torch.allclose(M.rmsd(x, x_adv), torch.tensor([0.0, 10 / math.sqrt(75)]), atol=1e-4)


def test_rmsd_checks_inputs():
    x = torch.rand(2, 1, 4, 4)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        M.rmsd(x, x + 2)
    with pytest.raises(ValueError, match="shape"):
        M.rmsd(x, x[:, :, :2])


def hand_example():
    """Two images, three labels (worked by hand in the test below)."""
    x = torch.zeros(2, 1, 2, 2)
    x_adv = x.clone()
    x_adv[0] += 2 / 255  # RMSD 2
    x_adv[1, 0, 0, 0] = 4 / 255  # RMSD sqrt(16 / 4) = 2
    y = torch.tensor([[True, False, False], [True, True, False]])
    A = torch.tensor([[True, True, False], [False, False, True]])
    B = torch.tensor([[False, False, True], [False, False, False]])
    logits = torch.logit(torch.tensor([[0.2, 0.8, 0.3], [0.9, 0.4, 0.6]]))  # the metrics take logits
    return logits, x, x_adv, y, A, B


def test_evaluate_attack_by_hand():
    scores, x, x_adv, y, A, B = hand_example()
    # y* = [[F, T, F], [T, T, T]]; predictions h = [[F, T, F], [T, F, T]]
    per = M.per_image_metrics(scores, x, x_adv, y, A, B)
    assert torch.allclose(per["rmsd"], torch.tensor([2.0, 2.0]), atol=1e-5)
    assert per["hamming_A"].tolist() == [0.0, 0.0]  # both A labels flipped / the one A label flipped
    assert per["hamming_B"][0] == 0.0 and math.isnan(float(per["hamming_B"][1]))  # B empty: N.A.
    assert torch.allclose(per["f1"], torch.tensor([1.0, 0.8]))  # 2*2 / (2 + 3)
    assert per["ranking_loss"].tolist() == [0.0, 0.0]  # image 1: y* has no negative
    assert per["map"].tolist() == [1.0, 1.0]
    assert per["auc"][0] == 1.0 and math.isnan(float(per["auc"][1]))
    # y_tau: image 0 = [-2, 2, -1] vs scores [.2, .8, .3] -> concordant; image 1 = [0, 0, 2] vs [.9, .4, .6]
    # pairs: (0,1) y tie; (0,2) y up, s down -> Q; (1,2) y up, s up -> P. P - Q = 0 -> tau 0
    assert float(per["kendall_tau_b"][0]) == pytest.approx(1.0) and float(per["kendall_tau_b"][1]) == pytest.approx(0.0)
    means = M.evaluate_attack(scores, x, x_adv, y, A, B)
    assert set(means) == set(M.METRIC_KEYS)
    assert means["rmsd"] == pytest.approx(2.0) and means["hamming_B"] == 0.0
    assert means["f1"] == pytest.approx(0.9) and means["auc"] == 1.0 and means["kendall_tau_b"] == pytest.approx(0.5)


def test_evaluate_attack_with_model_and_batches():
    _, x, x_adv, y, A, B = hand_example()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    with torch.no_grad():
        scores = model(x_adv)  # logits
    out = M.evaluate_attack(model, x, x_adv, y, A, B, batch_size=1)
    ref = M.evaluate_attack(scores, x, x_adv, y, A, B)
    assert all(out[k] == pytest.approx(ref[k], nan_ok=True) for k in ref)
    with pytest.raises(ValueError, match="training mode"):
        M.evaluate_attack(model.train(), x, x_adv, y, A, B)
    with pytest.raises(ValueError, match="logits"):
        M.evaluate_attack(torch.nn.Flatten().eval(), x, x_adv, y, A, B)


def test_evaluate_attack_validation():
    scores, x, x_adv, y, A, B = hand_example()
    with pytest.raises(ValueError, match="overlap"):
        M.evaluate_attack(scores, x, x_adv, y, A, A)
    with pytest.raises(ValueError, match="A is empty"):
        M.evaluate_attack(scores, x, x_adv, y, torch.zeros_like(A), B)
    with pytest.raises(ValueError, match="logits_adv contains NaN or Inf"):
        M.evaluate_attack(scores.masked_fill(A, float("inf")), x, x_adv, y, A, B)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        M.evaluate_attack(scores, x, x_adv + 1, y, A, B)
    with pytest.raises(ValueError, match="shape"):
        M.evaluate_attack(scores[:, :2], x, x_adv, y, A, B)
    with pytest.raises(ValueError, match="bool"):
        M.hamming_loss(scores, y, A)
    with pytest.raises(ValueError, match="integer"):
        M.kendall_tau_b(scores, scores)


@st.composite
def score_label_batches(draw):
    n = draw(st.integers(1, 6))
    L = draw(st.integers(1, 6))
    levels = draw(st.sampled_from([2, 3, 1000]))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    s = torch.randint(0, levels, (n, L), generator=g).float() / (levels - 1)
    y = torch.rand(n, L, generator=g) < draw(st.floats(0, 1))
    return s, y


@settings(max_examples=40, deadline=None)
@given(score_label_batches())
def test_metric_ranges_and_no_inf(batch):
    s, y = batch
    for fn, lo, hi, nan_ok in ((M.ranking_loss, 0, 1, False), (M.average_precision, 0, 1, False),
                               (M.instance_auc, 0, 1, True)):
        v = fn(s, y)
        assert v.shape == (s.shape[0],) and not torch.isinf(v).any()
        assert nan_ok or not torch.isnan(v).any()
        v = v[~torch.isnan(v)]
        assert ((v >= lo) & (v <= hi)).all()
    tau = M.kendall_tau_b(s, y.to(torch.int8))
    assert not torch.isinf(tau).any() and (tau[~torch.isnan(tau)].abs() <= 1).all()
    pred = M.predict(s)
    f1 = M.instance_f1(pred, y)
    assert ((f1 >= 0) & (f1 <= 1)).all()
    q = M.model_quality(s, y)
    assert all(math.isfinite(v) and 0 <= v <= 1 for v in q.values())


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**16), st.integers(2, 6))
def test_evaluate_attack_ranges(seed, L):
    g = torch.Generator().manual_seed(seed)
    y = torch.rand(5, L, generator=g) < 0.5
    y[:, 0], y[:, 1] = True, False
    t = random_case(y, generator=g)
    A, B = t.A, t.B
    x = torch.rand(5, 1, 3, 3, generator=g)
    x_adv = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    scores = (torch.rand(5, L, generator=g).round() * 2 - 1) * 30  # logits of probabilities 0 / 1, tied
    out = M.evaluate_attack(scores, x, x_adv, y, A, B)
    assert set(out) == set(M.METRIC_KEYS)
    assert not any(math.isinf(v) for v in out.values())
    # NaN only where every row is undefined: B empty everywhere (L = 2), or every row's scores constant
    assert math.isnan(out["hamming_B"]) == (not bool(B.any()))
    constant = (scores == scores[:, :1]).all(1)
    assert math.isnan(out["kendall_tau_b"]) == bool(constant.all())
    assert all(math.isfinite(out[k]) for k in M.METRIC_KEYS if k not in ("hamming_B", "kendall_tau_b"))
    assert 0 <= out["rmsd"] <= 255 and 0 <= out["hamming_A"] <= 1 and 0 <= out["map"] <= 1


def test_metrics_on_logits_see_no_saturation_ties():
    """Logits 20 and 18 are both probability 1.0 in float32: a tie on probabilities, an order on logits."""
    logits = torch.tensor([[20.0, 18.0, -5.0], [18.0, 20.0, -5.0]])
    assert torch.sigmoid(logits)[:, :2].eq(1.0).all()
    y = torch.tensor([[False, False, False], [False, False, False]])
    A = torch.tensor([[True, False, False], [True, False, False]])  # y* = [T, F, F]: label 0 above label 1
    x = torch.zeros(2, 1, 2, 2)
    per = M.per_image_metrics(logits, x, x, y, A, ~A)
    assert per["ranking_loss"].tolist() == [0.0, 0.5] and per["auc"].tolist() == [1.0, 0.5]
    assert per["map"].tolist() == [1.0, 0.5]
    # on probabilities labels 0 and 1 tie in both images: the two rows could not be told apart
    assert M.ranking_loss(torch.sigmoid(logits), y ^ A).tolist() == [0.25, 0.25]


def test_predictions_on_logits_use_zero_inclusively():
    logits = torch.tensor([[-1e-3, 0.0, 1e-3]])
    assert M.predict_from_logits(logits).tolist() == [[False, True, True]]
    assert torch.equal(M.predict_from_logits(logits), M.predict(torch.sigmoid(logits.double())))
    y, A = torch.tensor([[False, False, True]]), torch.tensor([[True, True, False]])
    x = torch.zeros(1, 1, 2, 2)
    per = M.per_image_metrics(logits, x, x, y, A, ~A)  # y* = [T, T, T]; h = [F, T, T]
    assert per["hamming_A"].tolist() == [0.5] and per["hamming_B"].tolist() == [0.0]
