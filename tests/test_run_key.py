"""Run keys of the experiment store (mlnb.experiments.run_experiment, mlnb.store.run_key): everything
that changes a row's per-image results changes the key, so a rerun recomputes instead of silently
reusing stale records; the runner's ``batch_size`` does not (no attack draws random numbers, so
chunks do not change results; a scenario-ε row is one call whatever the batch size).

The runner is driven end to end on a tiny fake data set and model (``_load`` and ``predict_scores``
patched) with counting fake attacks, so every run takes milliseconds: a recomputation is seen as calls
to the fake attack and a new folder in the store.
"""
from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch

from mlnb import attacks, models
from mlnb import experiments as E
from mlnb.attacks import AttackResult
from mlnb.presets import PAPER_FORMS, ROW_NAMES, get_preset, row_attack
from mlnb.target import Target

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_thread")]

NAMES = ("cat", "dog", "sheep", "bird")
REAL = dict(attacks.ATTACKS)  # the real functions, for their signatures
# every tunable keyword: values to switch to (the first one different from the row's current value)
ALTERNATIVES = {
    "eps": [None, 0.05, "scenario"], "eps_max": [10 / 255, 0.2], "n_eps": [21, 5],
    "lambda_init": [10.0, 3.0], "n_search": [2, 3], "max_iter": [10, 7], "lr": [0.01, 0.02],
    "kappa": [0.0, 0.1], "hinge_space": ["probability", "logit"], "tanh_eps": [1e-6, 1e-4],
    "check_every": [10, 3], "overshoot": [None, 0.1], "form": ["greedy", "paper"],
    "omega_zero": ["C", "C1"], "threshold": [None, 0.4], "pairwise": [False, True],
    "weights": [None, None], "select": ["tau", "constraints"],
    "autocast_dtype": [None, torch.bfloat16], "channels_last": [False, True], "early_abort": [True, False],
}
NOT_IN_KEY = {"batch_size", "trace", "generator", "progress"}  # set by the runner, or results-neutral by design


def tunables(row: str) -> dict:
    """The keyword-only parameters of the row's real attack, with their defaults."""
    sig = inspect.signature(REAL[row_attack(row)]).parameters
    return {k: p.default for k, p in sig.items() if p.kind is p.KEYWORD_ONLY and k not in NOT_IN_KEY}


def other_value(key: str, current):
    if key == "weights":
        return tuple([1.0, 0.5] + [1.0] * (len(current) - 2))
    for v in ALTERNATIVES[key]:
        if v != current or type(v) is not type(current):
            return v
    raise AssertionError(key)


class FakeData:
    """What the runner reads from a test set: ``labels``, ``label_names``, ``ids``, ``tensors(idx)``."""

    def __init__(self, model):
        self.x = torch.rand(24, 1, 4, 4, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            self.labels = model(self.x) >= 0
        self.label_names, self.ids = NAMES, [f"img{i}" for i in range(24)]

    def tensors(self, idx):
        return self.x[idx], self.labels[idx]


def _model():
    m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, len(NAMES)))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        m[1].weight.copy_(torch.randn(len(NAMES), 16, generator=g))
        m[1].bias.copy_(-m[1].weight.sum(1) * 0.5)
    return m.eval()


class Harness:
    """The runner on the fake data, with a counting fake attack in place of all six attacks."""

    def __init__(self, root, monkeypatch, model_id="tiny"):
        self.root, self.calls, self.model = root, [], _model()
        self.ds = FakeData(self.model)
        self.model_id = model_id
        lab = self.ds.labels
        assert (lab.any(1) & (~lab).any(1)).sum() >= 8  # random case: enough eligible images
        assert (lab[:, 0] & (lab.sum(1) >= 2)).sum() >= 2 and (lab[:, 1] & (lab.sum(1) >= 2)).sum() >= 2  # reduce
        monkeypatch.setattr(E, "_load", lambda preset, *a, **k: (self.model, self.ds, self.model_id))
        monkeypatch.setattr(models, "predict_logits", lambda model, ds, **k: model(ds.x).detach())
        for name in REAL:
            monkeypatch.setitem(attacks.ATTACKS, name, self._attack(name))

    def _attack(self, name):
        def attack(model, x, target, *, generator=None, progress=True, **params):
            assert isinstance(target, Target) and len(target) == x.shape[0]  # the runner passes the images' Target
            self.calls.append((name, x.shape[0], params))
            x_adv = (x + 0.02).clamp(0, 1)
            with torch.no_grad():
                z = model(x_adv)
            n = x.shape[0]
            return AttackResult(x_adv=x_adv, scores=torch.sigmoid(z), logits=z, success=torch.ones(n, dtype=torch.bool),
                                n_satisfied=target.n_constraints, iterations=torch.ones(n, dtype=torch.long),
                                param=torch.full((n,), float("nan")), kendall_tau=torch.zeros(n))
        return attack

    def run(self, rows, strategies="random", *, preset=None, **kw):
        """Run; returns (attack calls made by this run, run folders in the store after it)."""
        before = len(self.calls)
        args = dict(out_dir=self.root, seed=0, n=4, max_rmsd=None, batch_size=2, device="cpu", progress=False)
        args.update(kw)
        res = E.run_experiment(preset or get_preset("smoke"), rows, strategies, **args)
        self.last = res
        return self.calls[before:], {p.name for p in self.root.iterdir() if p.is_dir()}


@pytest.fixture
def harness(tmp_path, monkeypatch):
    return Harness(tmp_path, monkeypatch)


def test_a_rerun_reuses_and_batch_size_does_not_change_the_key(harness):
    rows = ["fgs", "fgs_per_image", "ml_cw", "ml_dp", "rank2"]
    calls, keys = harness.run(rows)
    assert {c[0] for c in calls} == {"fgs", "ml_cw", "ml_dp", "rank2"} and len(keys) == len(rows)
    table = harness.last.table.to_csv()
    for batch_size in (2, 3, 1, 8):  # the same run whatever the chunking: nothing recomputed
        again, keys2 = harness.run(rows, batch_size=batch_size)
        assert again == [] and keys2 == keys, batch_size
        assert harness.last.table.to_csv() == table
    scenario = [size for name, size, p in calls if p.get("eps") == "scenario"]
    assert scenario == [4]  # the scenario row is one call over its images, whatever batch_size is


@pytest.mark.parametrize("row", ["ml_cw", "rank1", "rank2", "fgs", "ml_dp"])
def test_the_attacks_batch_size_and_trace_do_not_change_the_key(harness, row):
    """The attack's own ``batch_size`` (how many images share a forward) and ``trace`` (a record of the
    search) change how, not what, is computed: asking for them reuses the run."""
    calls, keys = harness.run([row])
    assert calls
    has_trace = "trace" in inspect.signature(REAL[row_attack(row)]).parameters
    assert has_trace == (row_attack(row) in ("ml_cw", "rank1", "rank2"))
    neutral = {"batch_size": 1, **({"trace": True} if has_trace else {})}
    for key, value in neutral.items():
        again, keys2 = harness.run([row], params={row: {key: value}})
        assert again == [] and keys2 == keys, (row, key)
    # a parameter that does change the results still makes a new run beside them
    if row_attack(row) in ("ml_cw", "rank1", "rank2"):
        calls, keys3 = harness.run([row], params={row: {"early_abort": False}})
        assert calls and len(keys3) == len(keys) + 1


@pytest.mark.parametrize("row", ROW_NAMES)
def test_every_attack_parameter_is_in_the_key(harness, row):
    calls, keys = harness.run([row])
    assert len(calls) >= 1
    resolved = E.row_params(get_preset("smoke"), row)
    assert harness.run([row])[0] == []  # same parameters: reused
    for key, default in tunables(row).items():
        current = resolved.get(key, default)
        new = other_value(key, current)
        calls, keys_now = harness.run([row], params={row: {key: new}})
        assert calls, f"{row}.{key}: {current!r} -> {new!r} reused stale results"
        assert all(p.get(key, "absent") == new for _, _, p in calls), (row, key)
        assert len(keys_now) == len(keys) + 1, (row, key)
        keys = keys_now
        # and asking for the preset's own value explicitly is the same run as not asking
        if key in resolved:
            assert harness.run([row], params={row: {key: current}})[0] == [], (row, key)


@pytest.mark.parametrize("row", ["ml_cw", "fgs"])
def test_runner_fields_are_in_the_key(harness, monkeypatch, row):
    """max_rmsd, seed, the number of images, the image size, the test-set size, the preset (name and
    attack budgets), the model and the strategy each make a new run."""
    smoke = get_preset("smoke")
    budget = {"n_eps": 7} if row == "fgs" else {"max_iter": 99}  # the preset's own budget for the attack
    calls, keys = harness.run([row])
    assert calls
    changes = [
        dict(max_rmsd=5.0), dict(max_rmsd=6.0), dict(seed=1), dict(n=3),
        dict(preset=get_preset("smoke", image_size=24)), dict(preset=get_preset("smoke", n_test=150)),
        dict(preset=dataclasses.replace(smoke, name="smoke2")),
        dict(preset=get_preset("smoke", attacks={**smoke.attacks, row: {**smoke.attacks[row], **budget}})),
    ]
    for change in changes:
        calls, keys_now = harness.run([row], **change)
        assert calls, f"{change} reused stale results"
        assert len(keys_now) == len(keys) + 1, change
        keys = keys_now
        assert harness.run([row], **change)[0] == []  # and that run is reused in turn
    harness.model_id = "another_model"
    calls, keys_now = harness.run([row])
    assert calls and len(keys_now) == len(keys) + 1
    harness.model_id = "tiny"
    calls, keys_now2 = harness.run([row], strategies="extreme")
    assert calls and len(keys_now2) == len(keys_now) + 1


def test_max_rmsd_rerun_reprojects(harness):
    """The store keeps raw and projected results apart: a bound applied after an unbounded run is
    recomputed and its records are projected (RMSD of the fake attack: 0.02 * 255 = 5.1)."""
    harness.run(["ml_cw"])
    assert not any(harness.last.records["projected"])
    calls, _ = harness.run(["ml_cw"], max_rmsd=2.0)
    assert calls and all(harness.last.records["projected"])
    assert harness.last.records["rmsd"].max() == pytest.approx(2.0, abs=1e-3)


def test_label_and_row_name_are_in_the_key(harness):
    """Reduce / augment: another preset label is another run. Two rows running the same attack are two
    runs, even where their parameters coincide."""
    calls, keys = harness.run(["ml_cw"], "reduce")
    assert calls and set(harness.last.records["label"]) == {"dog"}
    calls, keys2 = harness.run(["ml_cw"], "reduce", preset=get_preset("smoke", reduce_label="cat"))
    assert calls and len(keys2) == len(keys) + 1 and set(harness.last.records["label"]) == {"cat"}
    # ml_dp (paper form) and ml_dp_greedy with the same resolved parameters: still two rows, two runs
    same = {"ml_dp": {"form": "greedy"}, "ml_dp_greedy": {"form": "greedy"}}
    assert E.row_params(get_preset("smoke"), "ml_dp", same) == E.row_params(get_preset("smoke"), "ml_dp_greedy", same)
    calls, keys3 = harness.run(["ml_dp", "ml_dp_greedy"], params=same)
    assert len(calls) == 2 * 2 and len(keys3) == len(keys2) + 2  # 4 images in chunks of 2, for each row


def test_scenario_rows_keep_batch_size_out_of_the_key(harness):
    """A scenario-ε row is attacked in one call: the runner's batch size is irrelevant to it, so neither
    recomputes it nor splits it; the same row with per-image ε is chunked."""
    calls, keys = harness.run(["fg"], n=6, batch_size=2)
    assert [c[1] for c in calls] == [6] and PAPER_FORMS["fg"] == {"eps": "scenario"}
    assert harness.run(["fg"], n=6, batch_size=4)[0] == []
    calls, _ = harness.run(["fg_per_image"], n=6, batch_size=4)
    assert [c[1] for c in calls] == [4, 2]


def test_records_keep_the_chunk_they_were_attacked_in(harness):
    """A run resumed with another batch size mixes chunkings (the model's convolutions round by batch size):
    each record says which."""
    harness.run(["fgs_per_image"], n=5, batch_size=2)
    assert sorted(harness.last.records["chunk"].tolist()) == [1, 2, 2, 2, 2]


def test_a_misspelt_parameter_of_a_row_that_is_not_run_fails():
    with pytest.raises(ValueError, match="unknown parameter"):  # used to be ignored with its row
        E.resolve_params(get_preset("smoke"), ["fgs_per_image"], {"ml_cw": {"max_iterr": 3}})


def test_parameters_of_a_row_that_is_not_run_are_named(harness):
    with pytest.warns(UserWarning, match=r"rows that are not run, \['ml_cw'\]"):
        harness.run(["fgs_per_image"], params={"ml_cw": {"max_iter": 3}})


def test_an_empty_row_list_and_a_zero_image_count_name_the_option():
    with pytest.raises(ValueError, match="no attack given"):
        E.split_names("", ROW_NAMES, "attack")
    assert E.split_names("ml_cw,", ROW_NAMES, "attack") == ["ml_cw"]
    with pytest.raises(ValueError, match="--n-images"):
        E.check_counts(["random"], 0, 0)
