"""The per-image result store: append, resume, truncated-line repair, shards and atomic merge (no model)."""
from __future__ import annotations

import json
import math

import pytest

from mlnb.store import MERGED, ResultStore, dumps_record, run_key

pytestmark = pytest.mark.unit


def _rec(i: int, **extra) -> dict:
    return {"index": i, "image_id": f"img-{i}", "rmsd": i / 10, **extra}


def test_append_resume_and_index_order(tmp_path):
    store = ResultStore(tmp_path, "run")
    assert store.append([_rec(5), _rec(2)]) == 2
    assert store.append([_rec(9), _rec(2)]) == 1  # index 2 already stored: skipped
    again = ResultStore(tmp_path, "run")
    assert again.done() == {2, 5, 9}
    assert [r["index"] for r in again.records()] == [2, 5, 9]  # index order, never completion order
    assert [r["index"] for r in again.records([9, 5, 7])] == [5, 9]


def test_truncated_last_line_is_repaired_on_open(tmp_path):
    store = ResultStore(tmp_path, "run")
    store.append([_rec(1), _rec(2)])
    good = store.shard.read_bytes()
    with open(store.shard, "ab") as fh:  # a kill in the middle of a write
        fh.write(b'{"index": 3, "image_id": "img-3", "rm')
    reopened = ResultStore(tmp_path, "run")
    assert store.shard.read_bytes() == good  # the half line is cut off
    assert reopened.done() == {1, 2}
    reopened.append([_rec(3)])
    lines = store.shard.read_text().splitlines()
    assert [json.loads(x)["index"] for x in lines] == [1, 2, 3]


def test_complete_but_invalid_last_line_is_repaired(tmp_path):
    store = ResultStore(tmp_path, "run")
    store.append([_rec(1)])
    with open(store.shard, "ab") as fh:
        fh.write(b'{"index": 2, "ima\n')
    assert ResultStore(tmp_path, "run").done() == {1}
    assert store.shard.read_text().count("\n") == 1


def test_corrupt_line_in_the_middle_raises(tmp_path):
    store = ResultStore(tmp_path, "run")
    store.append([_rec(1)])
    with open(store.shard, "ab") as fh:
        fh.write(b"garbage\n" + (dumps_record(_rec(2)) + "\n").encode())
    with pytest.raises(ValueError, match="corrupt line"):
        ResultStore(tmp_path, "run")


def test_nan_is_stored_as_null_and_files_are_strict_json(tmp_path):
    store = ResultStore(tmp_path, "run")
    store.append([_rec(1, hamming_B=math.nan)])
    line = store.shard.read_text().strip()
    assert json.loads(line)["hamming_B"] is None and "NaN" not in line
    assert store.records()[0]["hamming_B"] is None  # in memory as on disk


def test_shards_merge_atomically_in_index_order(tmp_path):
    r0, r1 = ResultStore(tmp_path, "run", rank=0), ResultStore(tmp_path, "run", rank=1)
    r1.append([_rec(4), _rec(1)])
    r0.append([_rec(3), _rec(0)])
    assert r0.shard != r1.shard
    path = r0.merge()
    assert path.name == MERGED
    assert [json.loads(x)["index"] for x in path.read_text().splitlines()] == [0, 1, 3, 4]
    assert not list(path.parent.glob("part-*.jsonl")) and not list(path.parent.glob(".*tmp"))
    # a later run with another number of processes sees everything as done
    assert ResultStore(tmp_path, "run", rank=2).done() == {0, 1, 3, 4}


def test_run_key_names_every_part_and_is_filesystem_safe():
    key = run_key(preset="smoke", dataset="animals", model="smoke-abc", attack="ml_cw", strategy="random",
                  params_hash="0123456789ab")
    assert key == "smoke__animals__smoke-abc__ml_cw__random__0123456789ab"
    assert "/" not in run_key(preset="a/b", dataset="c d", model="m", attack="x", strategy="y", params_hash="h")


# ----------------------------------------------------------------------------- tables and confidence intervals
def _frame(spec: dict, seed: int = 0):
    """Records of ``{(strategy, attack): n_images}`` with random metrics in [0, 1], every fifth image a
    clean-image fallback (``rmsd == 0``), every third image a failure."""
    import numpy as np

    from mlnb.store import METRIC_KEYS, records_frame

    rng = np.random.default_rng(seed)
    recs = []
    for (strategy, attack), n in spec.items():
        for i in range(n):
            m = {k: float(rng.random()) for k in METRIC_KEYS}
            m["rmsd"] = 0.0 if i % 5 == 0 else 1.0 + 4 * m["rmsd"]
            recs.append({"dataset": "animals", "strategy": strategy, "attack": attack, "index": i, "A": [0],
                         "scores_clean": [0.9, 0.1], "scores_adv": [0.2, 0.1], "success": i % 3 != 0, **m})
    return records_frame(recs)


def test_rmsd_is_over_perturbed_images_and_clean_counts_the_fallbacks():
    from mlnb.store import TABLE_COLUMNS, aggregate

    frame = _frame({("random", "ml_cw"): 10, ("random", "fgs"): 7})
    table = aggregate(frame, ["random"], ["fgs", "ml_cw"])
    assert list(table.columns) == list(TABLE_COLUMNS) and list(table.columns)[-2:] == ["Success", "Clean"]
    assert [t[2] for t in table.index] == ["fgs", "ml_cw"]
    for attack, n in (("ml_cw", 10), ("fgs", 7)):
        g = frame[frame["attack"] == attack]
        row = table.loc[("animals", "random", attack)]
        assert row["Clean"] == len(range(0, n, 5)) == int((g["rmsd"] == 0).sum())
        assert row["RMSD"] == pytest.approx(g.loc[g["rmsd"] > 0, "rmsd"].mean())
        assert row["RMSD"] > g["rmsd"].mean()  # the zeros are out
        assert row["Success"] == pytest.approx(g["success"].mean())
        assert row["F1"] == pytest.approx(g["f1"].mean())
    only_clean = frame[frame["rmsd"] == 0]
    assert math.isnan(aggregate(only_clean).iloc[0]["RMSD"])  # no perturbed image: NaN


def test_ci_contains_the_mean_and_has_the_tables_shape():
    from mlnb.store import aggregate, aggregate_ci

    frame = _frame({("random", "ml_cw"): 40, ("extreme", "ml_cw"): 40, ("random", "rank2"): 40})
    table = aggregate(frame)
    lo, hi = aggregate_ci(frame, n_boot=500)
    for t in (lo, hi):
        assert t.index.equals(table.index) and list(t.columns) == list(table.columns)
    assert ((lo <= table + 1e-12) & (table <= hi + 1e-12)).all().all()
    assert (hi - lo > 0).all().all()
    lo99, hi99 = aggregate_ci(frame, n_boot=500, level=0.99)
    assert ((lo99 <= lo + 1e-12) & (hi <= hi99 + 1e-12)).all().all()  # a higher level is wider


def test_ci_of_a_constant_column_has_zero_width():
    from mlnb.store import aggregate, aggregate_ci

    frame = _frame({("random", "ml_cw"): 25})
    frame["f1"] = 0.1  # not exactly representable: the resampled mean must still be exactly 0.1
    frame["success"] = True
    lo, hi = aggregate_ci(frame)
    table = aggregate(frame)
    for col in ("F1", "Success"):
        assert lo[col].iloc[0] == hi[col].iloc[0] == table[col].iloc[0]


def test_ci_shrinks_with_more_images():
    from mlnb.store import aggregate_ci

    small = aggregate_ci(_frame({("random", "ml_cw"): 20}, seed=1))
    large = aggregate_ci(_frame({("random", "ml_cw"): 500}, seed=1))
    width = lambda ci: (ci[1] - ci[0]).iloc[0]  # noqa: E731
    for col in ("RMSD", "Hamming(A)", "F1", "mAP", "Success"):
        assert width(large)[col] < 0.5 * width(small)[col], col


def test_ci_is_seeded_and_a_row_does_not_depend_on_the_others():
    from mlnb.store import aggregate_ci

    frame = _frame({("random", "ml_cw"): 30, ("random", "fgs"): 30})
    a, b = aggregate_ci(frame, seed=3), aggregate_ci(frame, seed=3)
    assert a[0].equals(b[0]) and a[1].equals(b[1])
    c = aggregate_ci(frame, seed=4)
    assert not a[0].equals(c[0])
    alone = aggregate_ci(frame[frame["attack"] == "ml_cw"], seed=3)
    assert alone[0].iloc[0].equals(a[0].loc[("animals", "random", "ml_cw")])


def test_ci_is_nan_aware_and_checks_its_arguments():
    from mlnb.store import aggregate_ci

    frame = _frame({("extreme", "ml_cw"): 12})
    frame["hamming_B"] = math.nan  # B = ∅: N.A.
    frame.loc[frame.index[:6], "map"] = math.nan
    lo, hi = aggregate_ci(frame)
    assert math.isnan(lo["Hamming(B)"].iloc[0]) and math.isnan(hi["Hamming(B)"].iloc[0])
    assert 0 <= lo["mAP"].iloc[0] < hi["mAP"].iloc[0] <= 1
    with pytest.raises(ValueError, match="level must lie in"):
        aggregate_ci(frame, level=95)
    with pytest.raises(ValueError, match="n_boot"):
        aggregate_ci(frame, n_boot=0)


def test_with_ci_formats_mean_and_interval():
    import pandas as pd

    from mlnb.store import aggregate, aggregate_ci, with_ci

    frame = _frame({("extreme", "ml_cw"): 12})
    frame["hamming_B"] = math.nan
    table = aggregate(frame)
    lo, hi = aggregate_ci(frame, n_boot=200)
    out = with_ci(table, lo, hi, digits=3)
    assert out.shape == table.shape and out.index.equals(table.index)
    f1 = out["F1"].iloc[0]
    assert f1 == f"{table['F1'].iloc[0]:.3f} [{lo['F1'].iloc[0]:.3f}, {hi['F1'].iloc[0]:.3f}]"
    assert out["Hamming(B)"].iloc[0] == "N.A." and out["Clean"].iloc[0].startswith("3 [")
    tiny = pd.DataFrame({"F1": [0.5]})
    assert with_ci(tiny, tiny - 0.25, tiny + 0.25)["F1"].iloc[0] == "0.5000 [0.2500, 0.7500]"


# ----------------------------------------------------------------------------- lines that are JSON but not records
@pytest.mark.parametrize("line, last", [(b"[1, 2]", False), (b'{"image_id": "x"}', False), (b"null", False),
                                        (b'{"index": "a", "image_id": "x"}', False), (b'{"index": 1.5}', False),
                                        (b"[1, 2]", True), (b"null", True)])
def test_a_json_line_that_is_not_a_record_names_the_file_and_line(tmp_path, line, last):
    store = ResultStore(tmp_path, "run")
    store.append([_rec(1)])
    tail = b"" if last else (dumps_record(_rec(3)) + "\n").encode()
    with open(store.shard, "ab") as fh:
        fh.write(b"\n" + line + b"\n" + tail)  # a blank line 2 is skipped; line 3 is not a record
    before = store.shard.read_bytes()
    with pytest.raises(ValueError) as err:
        ResultStore(tmp_path, "run")
    msg = str(err.value)
    assert str(store.shard) in msg and "line 3 (byte " in msg and line.decode() in msg
    assert 'not a record (a JSON object with a whole-number "index")' in msg and "move the file away" in msg
    assert store.shard.read_bytes() == before  # a whole line is not a half-written one: nothing is cut


def test_records_frame_and_summary_without_the_optional_keys():
    from mlnb.store import records_frame, summary

    frame = records_frame([{"index": 0, "image_id": "a", "rmsd": 1.0}])  # only what the module requires
    assert frame["p_clean"].isna().all() and frame["p_adv"].isna().all() and frame.loc[0, "rmsd"] == 1.0
    mixed = records_frame([{"index": 0, "image_id": "a", "A": [1], "scores_clean": [0.1, 0.7], "scores_adv": [0.2, 0.3]},
                           {"index": 1, "image_id": "b"}])  # a record without A or scores: NaN, the other unchanged
    assert mixed["p_clean"].tolist()[0] == 0.7 and mixed["p_adv"].tolist()[0] == 0.3 and mixed["p_adv"].isna().tolist()[1]
    with pytest.raises(ValueError, match="summary needs the records' keys dataset, strategy, attack"):
        summary(frame)
    keyed = records_frame([{"index": i, "image_id": str(i), "dataset": "d", "strategy": "random", "attack": "fgs",
                            "success": i > 0} for i in range(4)])
    s = summary(keyed)
    assert s.loc[("d", "random", "fgs"), "images"] == 4 and s.loc[("d", "random", "fgs"), "success_rate"] == 0.75
    assert math.isnan(s.loc[("d", "random", "fgs"), "projected"])  # not recorded: NaN, not KeyError
