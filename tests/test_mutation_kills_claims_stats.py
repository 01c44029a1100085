"""Behaviour of mlnb.paper.claims_stats that the other unit tests left unpinned (found by mutation testing,
docs/MUTATION.md): Est arithmetic, the seeding and size of the resamples, the histogram bins, and
what ClaimData reports (reasons, dropped counts) on small frames built by hand."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlnb.paper import claims_stats as S
from mlnb.paper.tables import paper_table

pytestmark = pytest.mark.unit


def _est(point, draws):
    return S.Est(float(point), np.asarray(draws, float))


def _records(n=6, attacks=("ml_cw", "rank1"), strategy="random", dataset="voc2007", **cols):
    """A records frame: ``n`` images per attack, columns given as {key: {attack: values}}."""
    rows = []
    for a in attacks:
        rec = {"dataset": dataset, "strategy": strategy, "attack": a, "index": np.arange(n)}
        for key, per_attack in cols.items():
            rec[key] = per_attack[a]
        rows.append(pd.DataFrame(rec))
    return pd.concat(rows, ignore_index=True)


# ----------------------------------------------------------------------------- Est
def test_est_ratio_and_scale_apply_to_the_point_and_every_draw():
    a, b = _est(1.0, [1.0, 3.0]), _est(0.5, [0.5, 0.25])
    r = a / b
    assert r.point == 2.0 and r.draws.tolist() == [2.0, 12.0]
    s = a.scale(2.0)
    assert s.point == 2.0 and s.draws.tolist() == [2.0, 6.0]
    assert (a + b).point == 1.5 and (a + b).draws.tolist() == [1.5, 3.25]


def test_est_ratio_by_zero_stays_finite():
    r = _est(1.0, [1.0, 2.0]) / _est(0.0, [0.0, 0.5])
    assert r.point == pytest.approx(1e12) and r.draws.tolist() == pytest.approx([1e12, 4.0])


def test_not_testable_without_numbers_says_not_measured():
    err = S.NotTestable("not run: fgs/random")
    assert str(err) == "not run: fgs/random" and err.measured == "not measured"


# ----------------------------------------------------------------------------- resampling
def test_resample_weights_default_seed_is_zero_and_every_image_can_be_drawn():
    W = S.resample_weights(5, key="k", n_boot=400)
    assert np.array_equal(W, S.resample_weights(5, key="k", seed=0, n_boot=400))
    assert not np.array_equal(W, S.resample_weights(5, key="k", seed=1, n_boot=400))
    assert (W.sum(0) > 0).all()  # image 0 included: indices are drawn from [0, n)
    assert W.mean() == pytest.approx(1.0)
    one = S.resample_weights(1, key="k", n_boot=3)
    assert one.tolist() == [[1], [1], [1]]


def test_conjunction_of_nothing_is_an_error_that_says_so():
    with pytest.raises(ValueError) as err:
        S.conjunction([])
    assert str(err.value) == "a conjunction of no parts"


# ----------------------------------------------------------------------------- Fig. 1 bins
def test_bin_index_follows_numpy_histogram_bins():
    p = np.array([0.0, 0.04, 0.05, 0.5, 0.949, 0.96, 0.99, 1.0])
    assert S.bin_index(p, 20).tolist() == [0, 0, 1, 10, 18, 19, 19, 19]
    counts, _ = np.histogram(p, bins=20, range=(0, 1))
    assert np.bincount(S.bin_index(p, 20), minlength=20).tolist() == counts.tolist()
    assert S.bin_index(np.array([0.0, 0.49, 0.5, 1.0]), 2).tolist() == [0, 0, 1, 1]


def test_a_frame_with_just_the_three_key_columns_is_records():
    assert S.is_records(pd.DataFrame(columns=["attack", "strategy", "index"]))
    assert not S.is_records(pd.DataFrame(columns=["attack", "strategy"]))


# ----------------------------------------------------------------------------- ClaimData
def test_claim_data_type_error_names_the_wrong_type():
    with pytest.raises(TypeError, match="got DataFrame"):
        S.ClaimData(_records(f1={"ml_cw": 1.0, "rank1": 1.0}), pd.DataFrame(), 10, 0)


def test_records_without_a_dataset_column_are_one_data_set():
    r = _records(f1={"ml_cw": np.linspace(0, 1, 6), "rank1": 0.5}).drop(columns="dataset")
    (cw, r1), dropped = S.ClaimData(r, None, 50, 0).means("random", ("ml_cw", "rank1"), "f1")
    assert cw.point == pytest.approx(0.5) and r1.point == 0.5 and dropped == 0


def test_default_data_set_is_the_one_of_the_first_record():
    a = _records(n=1, dataset="voc2007", f1={"ml_cw": 0.25, "rank1": 0.5})
    b = _records(n=1, dataset="voc2012", f1={"ml_cw": 0.75, "rank1": 0.5})
    mixed = pd.concat([a, b], ignore_index=True).iloc[[0, 2, 1, 3]]  # voc2007, voc2012, voc2007, voc2012
    (cw,), _ = S.ClaimData(mixed, None, 10, 0).means("random", ("ml_cw",), "f1")
    assert cw.point == 0.25
    (cw,), _ = S.ClaimData(a, None, 10, 0).means("random", ("ml_cw",), "f1")  # a single image works
    assert cw.point == 0.25


def test_table_dataset_level_is_found_by_name():
    t = paper_table(4)
    moved = t.reorder_levels(["strategy", "attack", "dataset"])
    for table in (t, moved):
        d = S.ClaimData(table, "voc2012", 10, 0)
        (cw,), dropped = d.means("random", ("ml_cw",), "rmsd")
        assert cw.point == t.loc[("voc2012", "random", "ml_cw"), "RMSD"] and dropped == 0


def test_missing_runs_are_all_named():
    d = S.ClaimData(_records(attacks=("fgs",), f1={"fgs": 0.5}), None, 10, 0)
    with pytest.raises(S.NotTestable) as err:
        d.means("random", ("ml_cw", "fgs", "rank1"), "f1")
    assert str(err.value) == "not run: ml_cw/random, rank1/random"


def test_a_missing_records_column_is_not_testable_and_says_which():
    d = S.ClaimData(_records(f1={"ml_cw": 0.5, "rank1": 0.5}), None, 10, 0)
    with pytest.raises(S.NotTestable, match="^the records have no hamming_A column$"):
        d.means("random", ("ml_cw", "rank1"), "hamming_A")


def test_rmsd_of_clean_images_is_dropped_and_counted_only_for_rmsd():
    rmsd = {"ml_cw": [0.0, 1.0, 2.0, 3.0], "rank1": [1.0, 0.0, 2.0, 4.0]}
    d = S.ClaimData(_records(n=4, rmsd=rmsd, f1=rmsd), None, 20, 0)
    (cw, r1), dropped = d.means("random", ("ml_cw", "rank1"), "rmsd")
    assert dropped == 2 and cw.point == 2.5 and r1.point == 3.0
    (cw, r1), dropped = d.means("random", ("ml_cw", "rank1"), "f1")  # a zero F1 is a value
    assert dropped == 0 and cw.point == 1.5
    _, dropped = S.ClaimData(paper_table(4), None, 20, 0).means("random", ("ml_cw", "rank1"), "rmsd")
    assert dropped == 0


def test_not_testable_reasons_name_the_attacks_and_the_strategy():
    zero = _records(n=3, rmsd={"ml_cw": [0.0, 0.0, 1.0], "rank1": [1.0, 1.0, 0.0]})
    with pytest.raises(S.NotTestable) as err:
        S.ClaimData(zero, None, 10, 0).means("random", ("ml_cw", "rank1"), "rmsd")
    assert str(err.value) == "every image has rmsd 0 (the clean image) for one of ml_cw, rank1 (random): all 3 dropped"
    nan = _records(n=2, f1={"ml_cw": [np.nan, 1.0], "rank1": [1.0, np.nan]})
    with pytest.raises(S.NotTestable) as err:
        S.ClaimData(nan, None, 10, 0).means("random", ("ml_cw", "rank1"), "f1")
    assert str(err.value) == "no image with f1 for every one of ml_cw, rank1 (random)"


def test_claim_data_resamples_with_its_seed_and_size():
    r = _records(n=8, f1={"ml_cw": np.linspace(0, 1, 8), "rank1": 0.5})
    (a,), _ = S.ClaimData(r, None, 37, 0).means("random", ("ml_cw",), "f1")
    (b,), _ = S.ClaimData(r, None, 37, 5).means("random", ("ml_cw",), "f1")
    assert a.draws.shape == (37,) and b.draws.shape == (37,)
    assert not np.array_equal(a.draws, b.draws)
    (c,), _ = S.ClaimData(r, None, 37, 5).means("random", ("ml_cw",), "f1")
    assert np.array_equal(b.draws, c.draws)


def test_strategies_on_the_same_images_get_their_own_resamples():
    f1 = {"ml_cw": np.linspace(0, 1, 6), "rank1": 0.5}
    r = pd.concat([_records(strategy=s, f1=f1) for s in ("random", "extreme")], ignore_index=True)
    d = S.ClaimData(r, None, 50, 0)
    (random_,), _ = d.means("random", ("ml_cw",), "f1")
    (extreme,), _ = d.means("extreme", ("ml_cw",), "f1")
    assert random_.point == extreme.point
    assert not np.array_equal(random_.draws, extreme.draws)
