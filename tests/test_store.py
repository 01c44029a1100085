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
