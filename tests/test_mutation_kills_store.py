"""Behaviour of mlnb.store that the other unit tests left unpinned (found by mutation testing,
docs/MUTATION.md): the exact run key and JSON line, blank and broken lines in shards of this and of
other ranks, the store's folder and repr, and the tables' order, dtypes, empty forms and summary."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from mlnb.store import (GROUP, MERGED, TABLE_COLUMNS, ResultStore, aggregate, aggregate_ci, dumps_record,
                        records_frame, run_key, summary, with_ci)

pytestmark = pytest.mark.unit


def _rec(i: int, **extra) -> dict:
    return {"index": i, "image_id": f"img-{i}", "rmsd": i / 10, **extra}


def _line(i: int) -> bytes:
    return (dumps_record(_rec(i)) + "\n").encode()


# ----------------------------------------------------------------------------- keys and lines
def test_run_key_replaces_unsafe_characters_by_one_dash():
    key = run_key(preset="a/b", dataset="c d", model="m:1", attack="x", strategy="y", params_hash="h")
    assert key == "a-b__c-d__m-1__x__y__h"


def test_dumps_record_is_compact_json_with_sorted_keys():
    assert dumps_record({"b": 1, "a": [1, 2], "c": {"z": 0, "y": 1}}) == '{"a":[1,2],"b":1,"c":{"y":1,"z":0}}'


def test_numpy_nan_and_inf_are_stored_as_null_like_python_ones():
    line = dumps_record({"a": np.float64("nan"), "b": np.array([1.0, np.inf]), "c": np.float32(0.5), "d": math.nan})
    assert json.loads(line) == {"a": None, "b": [1.0, None], "c": 0.5, "d": None}


# ----------------------------------------------------------------------------- shards
def test_default_rank_is_zero_and_parent_folders_are_created(tmp_path):
    store = ResultStore(tmp_path / "new" / "deeper", "run")
    assert store.rank == 0 and store.shard.name == "part-0.jsonl" and store.folder.is_dir()
    store.append([_rec(1), _rec(2)])
    assert repr(store) == f"ResultStore({str(store.folder)!r}, rank=0, 2 records)"


def test_blank_lines_in_a_shard_are_skipped(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "part-0.jsonl").write_bytes(b"\n" + _line(1) + b"\n\n" + _line(2))
    store = ResultStore(tmp_path, "run")
    assert [r["index"] for r in store.records()] == [1, 2]


def test_a_corrupt_line_followed_by_even_one_byte_raises(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "part-0.jsonl").write_bytes(_line(1) + b"garbage\nx")
    with pytest.raises(ValueError, match="corrupt line at byte"):
        ResultStore(tmp_path, "run")


def test_another_ranks_half_written_line_is_skipped_and_left_alone(tmp_path):
    other = ResultStore(tmp_path, "run", rank=1)
    other.append([_rec(4), _rec(5)])
    broken = other.shard.read_bytes() + b'{"index": 6, "ima'
    other.shard.write_bytes(broken)
    mine = ResultStore(tmp_path, "run", rank=0)  # reads rank 1's shard, must not repair it
    assert mine.done() == {4, 5}
    assert other.shard.read_bytes() == broken
    mine.reload()
    assert mine.done() == {4, 5} and other.shard.read_bytes() == broken


def test_merge_reads_a_half_written_other_shard_and_keeps_the_whole_records(tmp_path):
    ResultStore(tmp_path, "run", rank=1).append([_rec(3)])
    r0 = ResultStore(tmp_path, "run", rank=0)
    r0.append([_rec(0)])
    shard1 = tmp_path / "run" / "part-1.jsonl"
    shard1.write_bytes(shard1.read_bytes() + b'{"index": 9')
    path = r0.merge()
    assert path.name == MERGED
    assert [json.loads(x)["index"] for x in path.read_text().splitlines()] == [0, 3]


# ----------------------------------------------------------------------------- tables
def _frame(spec: dict) -> pd.DataFrame:
    recs = []
    for (strategy, attack), values in spec.items():
        for i, v in enumerate(values):
            m = {k: v for k in ("rmsd", "hamming_A", "hamming_B", "f1", "ranking_loss", "map", "auc", "kendall_tau_b")}
            recs.append({"dataset": "animals", "strategy": strategy, "attack": attack, "index": i, "A": [0],
                         "scores_clean": [0.9, 0.1], "scores_adv": [0.2, 0.1], "success": v > 0.5,
                         "projected": i == 0, **m})
    return records_frame(recs)


SPEC = {("random", "ml_cw"): [0.0, 1.0, 2.0], ("random", "rank2"): [1.0, 3.0],
        ("extreme", "ml_cw"): [0.5, 0.5], ("extreme", "rank2"): [2.0, 0.0, 4.0]}


def test_aggregate_follows_the_given_orders_and_counts_clean_images_as_integers():
    frame = _frame(SPEC)
    table = aggregate(frame, ["extreme", "random"], ["rank2", "ml_cw"])
    assert [t[1:] for t in table.index] == [("extreme", "rank2"), ("extreme", "ml_cw"),
                                          ("random", "rank2"), ("random", "ml_cw")]
    assert table["Clean"].tolist() == [1, 0, 0, 1] and table["Clean"].dtype.kind == "i"
    assert table.loc[("animals", "extreme", "rank2"), "RMSD"] == 3.0  # (2 + 4) / 2: the clean image is out
    default = aggregate(frame)
    assert [t[1:] for t in default.index] == [("random", "ml_cw"), ("random", "rank2"),
                                            ("extreme", "ml_cw"), ("extreme", "rank2")]


def test_empty_records_give_empty_tables_with_the_columns_and_index_names():
    for t in (aggregate(pd.DataFrame()), *aggregate_ci(pd.DataFrame())):
        assert t.empty and list(t.columns) == list(TABLE_COLUMNS) and list(t.index.names) == GROUP


def test_with_ci_matches_cells_by_label_not_position():
    frame = _frame(SPEC)
    table = aggregate(frame)
    lo, hi = aggregate_ci(frame, n_boot=50)
    part = table.iloc[::-1][["F1", "RMSD"]]  # rows reversed, two columns swapped
    out = with_ci(part, lo, hi, digits=3)
    for key in part.index:
        for c in part.columns:
            assert out.loc[key, c] == f"{part.loc[key, c]:.3f} [{lo.loc[key, c]:.3f}, {hi.loc[key, c]:.3f}]"


def test_with_ci_prints_missing_bounds_as_nan():
    t = pd.DataFrame({"F1": [0.5], "RMSD": [2.0]})
    lo = pd.DataFrame({"F1": [np.nan]})
    out = with_ci(t, lo, lo)
    assert out["F1"].iloc[0] == "0.5000 [nan, nan]" and out["RMSD"].iloc[0] == "2.0000 [nan, nan]"


def test_summary_counts_images_success_and_projection_per_run():
    s = summary(_frame(SPEC))
    assert list(s.columns) == ["images", "success_rate", "projected"]
    assert list(s.index.names) == GROUP
    assert s.loc[("animals", "random", "ml_cw")].tolist() == pytest.approx([3, 2 / 3, 1 / 3])
    assert s.loc[("animals", "extreme", "rank2")].tolist() == pytest.approx([3, 2 / 3, 1 / 3])
    assert [t[1:] for t in s.index] == list(SPEC)  # in order of appearance


def _bare(**extra) -> dict:
    return {"dataset": "animals", "strategy": "random", "attack": "ml_cw", "index": 0, "A": [1],
            "scores_clean": [0.9, 0.8, 0.1], "scores_adv": [0.7, 0.2, 0.1], "rmsd": 1.0, **extra}


def test_records_frame_reads_nulls_as_nan_in_every_numeric_column():
    recs = [_bare(index=0, rmsd_raw=None, param=None, attack_kendall_tau=None),
            _bare(index=1, rmsd_raw=2.5, param=0.1, attack_kendall_tau=0.5)]
    f = records_frame(recs)
    for k in ("rmsd_raw", "param", "attack_kendall_tau"):
        assert f[k].dtype == np.float64 and math.isnan(f[k].iloc[0]), k


def test_records_frame_target_label_probability_only_for_a_single_flipped_label():
    f = records_frame([_bare(index=0), _bare(index=1, A=[0, 1]), _bare(index=2, A=[])])
    assert f["p_clean"].iloc[0] == 0.8 and f["p_adv"].iloc[0] == 0.2  # A = [1]
    assert f[["p_clean", "p_adv"]].iloc[1:].isna().all().all()


def test_tables_without_success_records_have_nan_success():
    frame = _frame(SPEC).drop(columns="success")
    assert aggregate(frame)["Success"].isna().all()


def test_names_missing_from_the_orders_go_last_in_order_of_appearance():
    frame = _frame(SPEC)
    table = aggregate(frame, ["extreme"], ["rank2"])
    assert [t[1:] for t in table.index] == [("extreme", "rank2"), ("extreme", "ml_cw"),
                                          ("random", "rank2"), ("random", "ml_cw")]
    lo, _ = aggregate_ci(frame, ["extreme"], ["rank2"], n_boot=20)
    assert lo.index.equals(table.index) and list(lo.index.names) == GROUP


def test_ci_defaults_are_1000_resamples_seed_0():
    frame = _frame({("random", "ml_cw"): (np.random.default_rng(0).random(15) + 0.5).tolist()})
    a = aggregate_ci(frame)
    b = aggregate_ci(frame, n_boot=1000, seed=0)
    assert a[0].equals(b[0]) and a[1].equals(b[1])
    for other in (aggregate_ci(frame, n_boot=1001, seed=0), aggregate_ci(frame, n_boot=1000, seed=1)):
        assert not a[0]["F1"].equals(other[0]["F1"])


def test_ci_arguments_are_checked_with_messages():
    frame = _frame(SPEC)
    for level in (0, 1, 1.5, -0.5):
        with pytest.raises(ValueError, match=r"^level must lie in \(0, 1\)"):
            aggregate_ci(frame, level=level)
    assert _msg(aggregate_ci, frame, n_boot=2.5) == "n_boot must be a whole number, got 2.5"
    for seed in (-1, 1.5, "3", True):
        assert _msg(aggregate_ci, frame, seed=seed) == f"seed must be a non-negative int, got {seed!r}"


def _msg(fn, *args, **kwargs) -> str:
    with pytest.raises((ValueError, TypeError)) as err:
        fn(*args, **kwargs)
    return str(err.value)


def test_ci_of_a_single_image_is_its_value():
    lo, hi = aggregate_ci(_frame({("random", "ml_cw"): [0.7]}), n_boot=30)
    assert lo["F1"].iloc[0] == hi["F1"].iloc[0] == 0.7


def test_ci_has_equal_tails():
    # the same images with negated values resample identically (same group, same seed): the interval
    # of -v is minus the interval of v exactly when both tails hold (1 - level) / 2
    v = np.random.default_rng(0).random(30) + 0.5
    pos, neg = _frame({("random", "ml_cw"): v.tolist()}), _frame({("random", "ml_cw"): (-v).tolist()})
    for level in (0.95, 0.8):
        lo_p, hi_p = aggregate_ci(pos, n_boot=1000, level=level)
        lo_n, hi_n = aggregate_ci(neg, n_boot=1000, level=level)
        assert lo_n["F1"].iloc[0] == pytest.approx(-hi_p["F1"].iloc[0], rel=1e-12)
        assert hi_n["F1"].iloc[0] == pytest.approx(-lo_p["F1"].iloc[0], rel=1e-12)


def _bootstrap_by_the_docstring(frame: pd.DataFrame, level: float, n_boot: int, seed: int) -> dict:
    """aggregate_ci's documented recipe, written out loop by loop: per group, generator
    ``default_rng([seed, crc32("|".join(group))])``, ``n_boot`` resamples of the images drawn by
    ``integers(0, n, (n_boot, n))``, each column's NaN-aware mean (``Clean``: the count), resamples where
    a column has no value skipped, then the two percentiles."""
    import zlib

    out = {}
    for key, g in frame.groupby(GROUP, sort=False):
        g = g.sort_values("index", kind="stable")
        rmsd = g["rmsd"].to_numpy(float)
        cols = {"RMSD": np.where(rmsd > 0, rmsd, np.nan), "Clean": (rmsd == 0).astype(float),
                "F1": g["f1"].to_numpy(float)}
        n = len(g)
        rng = np.random.default_rng([seed, zlib.crc32("|".join(map(str, key)).encode())])
        picks = rng.integers(0, n, size=(n_boot, n))
        for c, vals in cols.items():
            stats = []
            for row in picks:
                chosen = vals[row]
                if c == "Clean":
                    stats.append(chosen.sum())
                elif np.isfinite(chosen).any():
                    stats.append(np.nanmean(chosen))
            q = [50 * (1 - level), 50 * (1 + level)]
            out[(key, c)] = tuple(np.percentile(stats, q)) if stats else (np.nan, np.nan)
    return out


def test_aggregate_ci_is_the_documented_percentile_bootstrap():
    # rmsd 0 is a clean-image fallback (RMSD undefined): a group with two perturbed images among eight
    # has many resamples without any, which must be skipped, not read as a value
    spec = {("random", "ml_cw"): [0.0, 0.0, 4.0, 1.0, 2.0, 0.0],
            ("random", "rank2"): [1.0, 3.0, 2.5, 0.7, 4.0], ("extreme", "ml_cw"): [0.5, 0.5]}
    frame = _frame(spec)
    # (seed, level, n_boot) where reading an empty resample as the first value (4.0) moves both ends
    lo, hi = aggregate_ci(frame, level=0.8, n_boot=200, seed=1)
    want = _bootstrap_by_the_docstring(frame, 0.8, 200, 1)
    for (key, c), (w_lo, w_hi) in want.items():
        np.testing.assert_allclose([lo.loc[key, c], hi.loc[key, c]], [w_lo, w_hi], rtol=1e-12, atol=1e-12,
                                   err_msg=f"{key} {c}")


def test_merge_tolerates_a_shard_that_another_process_removed_meanwhile(tmp_path, monkeypatch):
    from pathlib import Path

    store = ResultStore(tmp_path, "run")
    store.append([_rec(1)])
    real_glob = Path.glob
    monkeypatch.setattr(Path, "glob", lambda self, pattern: [*real_glob(self, pattern), self / "part-7.jsonl"])
    path = store.merge()
    assert [json.loads(x)["index"] for x in path.read_text().splitlines()] == [1]
    assert not store.shard.exists()


@pytest.fixture
def fsyncs(monkeypatch):
    """Each ``os.fsync``: the file it reached and that file's size at that moment (a crash after the
    call keeps exactly that many bytes)."""
    import os

    seen, real = [], os.fsync

    def spy(fd):
        seen.append((os.path.basename(os.readlink(f"/proc/self/fd/{fd}")), os.fstat(fd).st_size))
        return real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return seen


@pytest.mark.skipif(not __import__("os").path.isdir("/proc/self/fd"), reason="needs /proc to name the fsynced file")
def test_append_repair_and_whole_file_writes_reach_the_disk_before_returning(tmp_path, fsyncs):
    store = ResultStore(tmp_path, "run")
    store.append([_rec(1), _rec(2)])
    assert fsyncs == [("part-0.jsonl", store.shard.stat().st_size)]  # the whole batch, synced
    whole = store.shard.read_bytes()
    store.shard.write_bytes(whole + b'{"index": 3, "ima')  # a kill inside write()
    fsyncs.clear()
    ResultStore(tmp_path, "run")  # reopening repairs the shard: the cut must be durable too
    assert fsyncs == [("part-0.jsonl", len(whole))]
    fsyncs.clear()
    ResultStore(tmp_path, "run").reload()  # reading a sound shard writes nothing
    assert fsyncs == []
    fsyncs.clear()
    merged = store.merge()
    assert len(fsyncs) == 1 and fsyncs[0][0].startswith(".results.jsonl.") and fsyncs[0][1] == merged.stat().st_size


def test_a_duplicate_index_keeps_the_first_stored_record(tmp_path):
    """Merged file first, then the shards by rank, each from its first line: the record kept is the one
    stored first, so a rerun that wrote an index again never replaces the result a table was made from."""
    folder = tmp_path / "run"
    folder.mkdir()

    def lines(*rmsds):
        return "".join(dumps_record({"index": 1, "rmsd": r}) + "\n" for r in rmsds).encode()

    (folder / "part-1.jsonl").write_bytes(lines(0.7))
    (folder / "part-0.jsonl").write_bytes(lines(0.9, 0.8))
    assert ResultStore(tmp_path, "run").records()[0]["rmsd"] == 0.9
    (folder / MERGED).write_bytes(lines(0.5))
    store = ResultStore(tmp_path, "run", rank=1)
    assert store.records()[0]["rmsd"] == 0.5 and len(store) == 1
    assert store.append([{"index": 1, "rmsd": 0.1}]) == 0 and store.records()[0]["rmsd"] == 0.5


def test_records_frame_reads_missing_and_unreadable_numbers_as_nan_floats():
    recs = [{"index": 0, "rmsd": 1.0, "rmsd_raw": "n/a", "param": "n/a", "attack_kendall_tau": "n/a", "A": [1],
             "scores_clean": [0.1, 0.8], "scores_adv": [0.2, 0.3]},
            {"index": 1, "rmsd": None, "rmsd_raw": 2, "param": 3, "attack_kendall_tau": None, "A": [0, 1],
             "scores_clean": [0.4, 0.6], "scores_adv": [0.5, 0.5]}]
    frame = records_frame(recs)
    for k in ("rmsd", "rmsd_raw", "param", "attack_kendall_tau"):
        assert frame[k].dtype == np.float64, k
    assert np.isnan(frame.loc[0, "rmsd_raw"]) and np.isnan(frame.loc[0, "param"]) and frame.loc[1, "param"] == 3.0
    assert np.isnan(frame.loc[0, "attack_kendall_tau"]) and frame.loc[1, "rmsd_raw"] == 2.0
    assert frame["p_clean"].tolist()[0] == 0.8 and frame["p_adv"].tolist()[0] == 0.3  # |A| = 1: label 1
    assert np.isnan(frame.loc[1, "p_clean"]) and np.isnan(frame.loc[1, "p_adv"])
