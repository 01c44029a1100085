"""Faults, reproducibility records and security hygiene (what the other test files do not cover).

Already covered elsewhere: a real ``SIGKILL`` after the first stored batch plus a truncated line, and
byte-identical smoke tables for one seed (``test_experiments.py``); truncated-line repair and the
corrupt-middle-line error (``test_store.py``); the attacks' own batch halving on out-of-memory
(``test_attacks.py``); ``safe_extract`` refusing escapes (``test_voc.py``).

Here, in process and in seconds, on a tiny model and an in-memory data set:

* the runner killed at a *random* (seeded) point, between batches or in the middle of a write,
  loses at most the batch in flight, and the resumed run gives exactly the uninterrupted records;
* ``torch.cuda.OutOfMemoryError`` for batches above some size makes the runner retry smaller
  batches and finish with the results of a run that never ran out of memory;
* whole-file writes leave the previous file intact when they fail before the rename;
* every notebook records seed and device in ``metrics.json``; parameters cells hold literals only;
* checkpoints load with ``weights_only=True``, no pickle is read outside the NumPy-only unpickler,
  and archive extraction happens only in ``safe_extract`` (with ``filter="data"``).
"""
from __future__ import annotations

import ast
import gzip
import json
import os
import pickle
import random
import re
from pathlib import Path

import pytest
import torch

from mlnb import animals, attacks, experiments as E, presets, training, utils
from mlnb.data import MultiLabelDataset
from mlnb.store import ResultStore, dumps_record

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "mlnb").glob("*.py"))
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


# ----------------------------------------------------------------------------- a tiny runner set-up
class Tiny(torch.nn.Module):
    """``(N, 1, 4, 4) -> (N, 4)`` logits: one fixed random convolution."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.conv = torch.nn.Conv2d(1, 4, 4)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 3)
            self.conv.bias.copy_(torch.tensor([0.5, -0.5, 0.2, -0.2]))

    def forward(self, x):
        return self.conv(x).flatten(1)


def _tiny_setup():
    model = Tiny().eval()
    images = torch.randint(0, 256, (40, 1, 4, 4), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    with torch.no_grad():
        labels = model(images.float() / 255) >= 0  # every image classified correctly: X = all
    ds = MultiLabelDataset("animals", "test", labels, ("a", "b", "c", "d"), [f"img-{i}" for i in range(40)],
                           images=images)
    return model, ds


@pytest.fixture
def tiny_runner(monkeypatch):
    """Patch the runner's loader to the tiny model and data set; returns a ``run(out_dir)`` function."""
    model, ds = _tiny_setup()
    monkeypatch.setattr(E, "_load", lambda *a, **k: (model, ds, "tiny"))
    preset = presets.get_preset("smoke", attack_batch_size=3)
    params = {"ml_cw": {"lambda_init": 1.0, "n_search": 2, "max_iter": 4, "lr": 0.05}, "fgs": {"n_eps": 3}}

    def run(out, **kw):
        return E.run_experiment(preset, "ml_cw,fgs", "random,extreme", out_dir=out, n=8, device="cpu",
                                params=params, progress=False, **kw)
    return run


def _lines(out: Path) -> dict[str, list[int]]:
    """Indices stored per run folder (shards and merged file), in file order."""
    found = {}
    for path in sorted(out.glob("*/*.jsonl")):
        text = path.read_text()
        found.setdefault(path.parent.name, []).extend(
            json.loads(line)["index"] for line in text.splitlines() if line.endswith("}"))
    return found


class Killed(BaseException):
    """Stands in for SIGKILL: not an Exception, so nothing in mlnb may catch it."""


def _count_calls(monkeypatch, kill_at: int | None = None):
    """Wrap ``ATTACKS['ml_cw']`` and ``['fgs']``; count calls and optionally die on call ``kill_at``."""
    calls = []
    for name in ("ml_cw", "fgs"):
        real = attacks.ATTACKS[name]

        def wrapped(*args, _real=real, **kwargs):
            calls.append(int(args[1].shape[0]))
            if kill_at is not None and len(calls) == kill_at:
                raise Killed()
            return _real(*args, **kwargs)
        monkeypatch.setitem(attacks.ATTACKS, name, wrapped)
    return calls


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Records and table of a run that was never interrupted (computed once)."""
    mp = pytest.MonkeyPatch()
    model, ds = _tiny_setup()
    mp.setattr(E, "_load", lambda *a, **k: (model, ds, "tiny"))
    try:
        preset = presets.get_preset("smoke", attack_batch_size=3)
        params = {"ml_cw": {"lambda_init": 1.0, "n_search": 2, "max_iter": 4, "lr": 0.05}, "fgs": {"n_eps": 3}}
        calls = _count_calls(mp)
        res = E.run_experiment(preset, "ml_cw,fgs", "random,extreme", out_dir=tmp_path_factory.mktemp("ref"), n=8,
                               device="cpu", params=params, progress=False)
    finally:
        mp.undo()
    return res, len(calls)


def _close_records(a, b, atol: float = 1e-5) -> None:
    """Same records up to float rounding: an attack run on another batch size may differ in the last
    bits (vectorised exp / tanh take another code path for another tensor length), never more."""
    import numpy as np

    cols = [c for c in a.records.columns if c not in ("scores_clean", "A")]
    assert list(a.records["index"]) == list(b.records["index"])
    for c in cols:
        x, y = a.records[c].tolist(), b.records[c].tolist()
        if x and isinstance(x[0], (float, int, list)) and not isinstance(x[0], bool):
            assert np.allclose(np.array(x, dtype=float), np.array(y, dtype=float), atol=atol, equal_nan=True), c
        else:
            assert x == y, c
    assert np.allclose(a.table.to_numpy(float), b.table.to_numpy(float), atol=atol, equal_nan=True)


def _same_records(a, b) -> None:
    cols = [c for c in a.records.columns if c not in ("scores_adv", "scores_clean", "A")]
    assert a.records[cols].to_csv() == b.records[cols].to_csv()
    assert a.table.to_csv() == b.table.to_csv()


# ----------------------------------------------------------------------------- kill and resume
@pytest.mark.parametrize("seed", [11, 12, 13])
def test_kill_between_batches_at_a_random_point_then_resume(tiny_runner, uninterrupted, monkeypatch, tmp_path, seed):
    reference, n_calls = uninterrupted
    # ml_cw: 2 strategies x 3 chunks (8 images in chunks of 3); fgs (the paper's one ε per scenario):
    # 2 strategies x 1 call
    assert n_calls == 8
    kill_at = random.Random(seed).randint(1, n_calls)
    with monkeypatch.context() as m:
        calls = _count_calls(m, kill_at=kill_at)
        with pytest.raises(Killed):
            tiny_runner(tmp_path)
    stored = sum(len(v) for v in _lines(tmp_path).values())
    finished = sum(calls[:kill_at - 1])  # every batch before the one in flight
    assert stored == finished, "lost a finished batch, or stored part of the batch in flight"
    with monkeypatch.context() as m:
        resumed_calls = _count_calls(m)
        _same_records(tiny_runner(tmp_path), reference)
    assert len(resumed_calls) == n_calls - (kill_at - 1)  # only what was missing is recomputed


@pytest.mark.parametrize("seed", [21, 22, 23])
def test_kill_in_the_middle_of_a_write_then_resume(tiny_runner, uninterrupted, monkeypatch, tmp_path, seed):
    """The process dies after writing a random prefix of a batch's bytes: the half line is cut off on resume."""
    reference, n_calls = uninterrupted
    rng = random.Random(seed)
    kill_at, fraction = rng.randint(1, n_calls), rng.uniform(0.05, 0.95)
    real_append, count = ResultStore.append, []

    def dying_append(self, records):
        records = list(records)
        count.append(len(records))
        if len(count) < kill_at:
            return real_append(self, records)
        text = "".join(dumps_record(r) + "\n" for r in records).encode()  # what append would write
        with open(self.shard, "ab") as fh:
            fh.write(text[:max(1, int(len(text) * fraction))])
        raise Killed()

    with monkeypatch.context() as m:
        m.setattr(ResultStore, "append", dying_append)
        with pytest.raises(Killed):
            tiny_runner(tmp_path)
    torn = [p for p in tmp_path.glob("*/part-*.jsonl") if not p.read_bytes().endswith(b"\n")]
    finished = sum(count[:kill_at - 1])
    assert len(torn) <= 1
    assert finished <= sum(len(v) for v in _lines(tmp_path).values()) <= finished + count[-1]
    _same_records(tiny_runner(tmp_path), reference)
    merged = sum(len(v) for v in _lines(tmp_path).values())
    assert merged == len(reference.records) and finished <= merged


# ----------------------------------------------------------------------------- out of memory
def test_runner_retries_smaller_batches_on_cuda_out_of_memory(tiny_runner, uninterrupted, monkeypatch, tmp_path):
    """Simulated on CPU: the attack raises torch.cuda.OutOfMemoryError for more than one image."""
    reference, _ = uninterrupted
    sizes = []
    for name in ("ml_cw",):  # a chunked row; fgs (one ε per scenario) is never split: see the next test
        real = attacks.ATTACKS[name]

        def picky(model, x, *args, _real=real, **kwargs):
            sizes.append(int(x.shape[0]))
            if x.shape[0] > 1:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            return _real(model, x, *args, **kwargs)
        monkeypatch.setitem(attacks.ATTACKS, name, picky)
    _close_records(tiny_runner(tmp_path), reference)  # these attacks draw no random numbers
    assert 3 in sizes and 1 in sizes and max(sizes) == 3


def test_out_of_memory_in_a_scenario_row_is_raised_with_advice(tiny_runner, monkeypatch, tmp_path):
    """Splitting a one-ε-per-scenario row would change its ε: the runner re-raises with the way out."""
    def hopeless(model, x, *args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
    monkeypatch.setitem(attacks.ATTACKS, "fgs", hopeless)
    with pytest.raises(torch.cuda.OutOfMemoryError, match="batch_size"):
        tiny_runner(tmp_path)


def test_out_of_memory_on_a_single_image_is_raised(tiny_runner, monkeypatch, tmp_path):
    def hopeless(model, x, *args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
    monkeypatch.setitem(attacks.ATTACKS, "ml_cw", hopeless)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        tiny_runner(tmp_path)


# ----------------------------------------------------------------------------- atomic whole-file writes
def _fail_rename(monkeypatch):
    def boom(*args, **kwargs):
        raise OSError("disk full (simulated)")
    monkeypatch.setattr(os, "replace", boom)
    monkeypatch.setattr(Path, "replace", boom)


def test_whole_file_writers_keep_the_old_file_when_interrupted(monkeypatch, tmp_path):
    import pandas as pd

    monkeypatch.setenv("MLNB_RESULTS", str(tmp_path / "results"))
    table = pd.DataFrame({"a": [1.0]})
    model = torch.nn.Linear(2, 2)
    meta = {"backbone": "small_cnn", "num_labels": 2, "image_size": 8, "label_names": ["a", "b"]}
    store = ResultStore(tmp_path / "runs", "run")
    store.append([{"index": 0, "image_id": "a"}])
    writers = {
        "metrics.json": (lambda v: utils.write_metrics("nb", {"v": v}, {"P": v}, seed=v, device="cpu")),
        "table.csv": (lambda v: utils.save_table(table * v, "nb", "table")),
        "model.pt": (lambda v: training.save_model(model, tmp_path / "model.pt", {**meta, "v": v})),
        "results.jsonl": (lambda v: store.merge(remove_shards=False)),
    }
    for name, write in writers.items():
        path = write(1)
        before = path.read_bytes()
        with monkeypatch.context() as m:
            _fail_rename(m)
            if name == "results.jsonl":
                store.append([{"index": 1, "image_id": "b"}])
            with pytest.raises(OSError, match="simulated"):
                write(2)
        assert path.read_bytes() == before, f"{name} was changed by a write that failed"


# ----------------------------------------------------------------------------- reproducibility records
def _code_cells(path: Path) -> list[str]:
    return ["".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_notebook_records_seed_and_device_in_metrics_json(path):
    calls = [node for src in _code_cells(path) for node in ast.walk(ast.parse(src))
             if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "write_metrics"]
    assert calls, f"{path.name} never calls write_metrics"
    for call in calls:
        keywords = {k.arg for k in call.keywords}
        assert {"seed", "device"} <= keywords, f"{path.name}: write_metrics(..., seed=SEED, device=device)"


def test_metrics_json_records_version_params_hash_seed_torch_device(monkeypatch, tmp_path):
    from mlnb import __version__

    monkeypatch.setenv("MLNB_RESULTS", str(tmp_path))
    params = {"SEED": 4, "PRESET": "smoke"}
    record = json.loads(utils.write_metrics("nb", {"m": 1.0}, params, seed=4, device="cpu").read_text())
    env = record["environment"]
    assert (env["mlnb"], env["torch"], env["device"]) == (__version__, torch.__version__, "cpu")
    assert record["params"] == params and record["params_hash"] == utils.param_hash(params) and record["seed"] == 4


# ----------------------------------------------------------------------------- security hygiene
def _calls(name: str):
    """``(file, line, call source)`` of every call to an attribute or function ``name`` in mlnb/."""
    for path in SOURCES:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                f = node.func
                called = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
                if called == name:
                    yield path.name, node.lineno, node


def test_every_torch_load_uses_weights_only():
    found = list(_calls("load"))
    torch_loads = [(f, n, c) for f, n, c in found if ast.unparse(c.func) == "torch.load"]
    assert torch_loads, "expected torch.load calls (checkpoints, data cache)"
    for f, n, c in torch_loads:
        kw = {k.arg: k.value for k in c.keywords}
        assert "weights_only" in kw and ast.literal_eval(kw["weights_only"]) is True, f"{f}:{n}"
    others = [f"{f}:{n} {ast.unparse(c.func)}" for f, n, c in found
              if ast.unparse(c.func) in ("pickle.load", "pickle.loads", "np.load", "numpy.load", "joblib.load")]
    assert not others, f"unpickling outside the NumPy-only unpickler: {others}"


def test_no_code_is_evaluated_from_data():
    bad = [f"{f}:{n}" for name in ("eval", "exec") for f, n, c in _calls(name) if isinstance(c.func, ast.Name)]
    assert not bad, bad
    for f, n, c in _calls("Unpickler"):
        raise AssertionError(f"{f}:{n} uses pickle.Unpickler directly")


def test_archives_are_extracted_only_by_safe_extract():
    sites = [(f, n, c) for f, n, c in _calls("extractall")] + [(f, n, c) for f, n, c in _calls("extract")]
    assert [(f, ast.unparse(c.func)) for f, n, c in sites] == [("voc.py", "tar.extractall")]
    kw = {k.arg for k in sites[0][2].keywords}
    assert kw, "extractall must pass filter='data' where Python offers it"
    src = (ROOT / "mlnb" / "voc.py").read_text()
    assert re.search(r'\{"filter": "data"\}', src)


def test_animal_pickles_admit_numpy_arrays_only(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.gz"
    with gzip.open(evil, "wb") as f:
        pickle.dump(Evil(), f)
    with pytest.raises(pickle.UnpicklingError, match="refusing to unpickle"):
        animals.read_array_pickle(evil)
    assert not marker.exists()
    ok = tmp_path / "ok.gz"
    with gzip.open(ok, "wb") as f:
        pickle.dump(__import__("numpy").arange(6, dtype="uint8").reshape(2, 3), f)
    assert animals.read_array_pickle(ok).tolist() == [[0, 1, 2], [3, 4, 5]]
    images, classes = animals.load_silhouettes()  # the package's real files pass
    assert images.dtype == torch.uint8 and len(images) == len(classes)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_parameters_cell_holds_annotated_literals_only(path):
    nb = json.loads(path.read_text())
    cells = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1
    tree = ast.parse("".join(cells[0]["source"]))
    for stmt in tree.body:
        assert isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name), \
            f"{path.name}: parameters must be `NAME: type = literal`, found {ast.unparse(stmt)!r}"
        ast.literal_eval(stmt.value)  # raises on anything but a plain literal
