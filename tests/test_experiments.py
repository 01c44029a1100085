"""The experiment runner: attack set, seeded draws, the RMSD bound, OOM retry, tables, claims, and
(smoke preset, CLI subprocesses) a SIGKILL-and-resume run whose table is byte-identical to an
uninterrupted one."""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from mlnb import experiments as E
from mlnb.attacks import AttackResult
from mlnb.metrics import METRIC_KEYS
from mlnb.paper.claims import table4_claims, table5_claims
from mlnb.paper.tables import paper_table, side_by_side
from mlnb.target import Target

CLI = ["--preset", "smoke", "--attacks", "ml_cw,rank2", "--strategies", "random,extreme", "--n-images", "6",
       "--batch-size", "2", "--no-progress"]


# ----------------------------------------------------------------------------- unit
@pytest.mark.unit
def test_project_rmsd_puts_large_perturbations_on_the_bound():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 8, 8, generator=g) * 0.5 + 0.25
    r = torch.randn(4, 3, 8, 8, generator=g) * torch.tensor([0.001, 0.01, 0.05, 0.2]).view(-1, 1, 1, 1)
    x_adv = (x + r).clamp(0, 1)
    out, projected = E.project_rmsd(x, x_adv, 4.0)
    rmsd = lambda a: (a - x).mul(255).flatten(1).pow(2).mean(1).sqrt()  # noqa: E731
    before, after = rmsd(x_adv), rmsd(out)
    assert projected.tolist() == (before > 4.0).tolist() and projected.any() and not projected.all()
    assert torch.allclose(after[projected], torch.full_like(after[projected], 4.0), atol=1e-3)
    assert torch.equal(out[~projected], x_adv[~projected])
    assert out.min() >= 0 and out.max() <= 1
    direction = lambda a: torch.nn.functional.normalize((a - x).flatten(1), dim=1)  # noqa: E731
    assert torch.allclose(direction(out)[projected], direction(x_adv)[projected], atol=1e-4)


@pytest.mark.unit
def test_attack_set_and_seeded_draws():
    y = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 0], [1, 0, 0], [0, 0, 1], [1, 1, 1]], dtype=torch.bool)
    scores = y.float() * 0.9 + 0.05
    scores[1, 0] = 0.7  # image 1 misclassified: not in X
    X = E.attack_set(logits=torch.logit(scores), y=y)  # decided on the logits
    assert X.tolist() == [0, 2, 3, 4, 5]
    assert E.attack_set(logits=torch.tensor([[-2e-8, 3.0]]), y=torch.tensor([[True, True]])).tolist() == []  # 0.5
    with pytest.raises(TypeError):  # positional probabilities (the old call) cannot select nothing silently
        E.attack_set(scores, y)
    a = E.draw_targets(y, X, "random", 3, seed=7)
    b = E.draw_targets(y, X, "random", 3, seed=7)
    assert torch.equal(a[0], b[0]) and a[2] == b[2]
    assert all(torch.equal(getattr(a[1], f), getattr(b[1], f)) for f in ("y", "A", "B", "eligible"))
    idx, t, n_el = a
    assert isinstance(t, Target) and len(t) == len(idx) and torch.equal(t.y, y[idx]) and t.eligible.all()
    A, B = t.A, t.B
    assert n_el == 4 and idx.tolist() == sorted(idx.tolist()) and 5 not in idx.tolist()  # all-positive: ineligible
    assert (A.sum(1) == 2).all() and not (A & B).any()
    idx, t, n_el = E.draw_targets(y, X, "reduce", 10, seed=7, label=0, names=None)
    assert idx.tolist() == [0, 2, 5] and n_el == 3 and t.A[:, 0].all()  # label 0 positive, >= 2 positives
    assert torch.equal(t.y, y[idx])
    idx, *_ = E.draw_targets(y, X, "extreme", 10, seed=1)
    assert idx.tolist() == X.tolist()


@pytest.mark.unit
@pytest.mark.parametrize("kwargs, word", [({"attacks": "ml_cw,nope"}, "ml_cw"), ({"strategies": ["bogus"]}, "random"),
                                          ({"preset": "huge"}, "smoke"), ({"max_rmsd": -1.0}, "max_rmsd"),
                                          ({"batch_size": 2.5}, "batch_size must be a whole number"),
                                          ({"params": {"nope": {}}}, "^unknown attack in params 'nope'")])
def test_runner_rejects_bad_arguments_with_the_valid_names(kwargs, word, tmp_path):
    args = {"preset": "smoke", "attacks": "ml_cw", "strategies": "random", **kwargs}
    with pytest.raises(ValueError, match=word):
        E.run_experiment(args.pop("preset"), args.pop("attacks"), args.pop("strategies"), out_dir=tmp_path, **args)


class _Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([[40.0, -40.0]]).repeat(1, 1))

    def forward(self, x):
        m = x.flatten(1).mean(1, keepdim=True) - 0.5
        return m * self.w


def _fake_attack(shift: float, max_batch: int | None = None, calls: list | None = None):
    """An attack that adds ``shift`` to every pixel; records each call's ``(batch size, kwargs)`` in ``calls``."""
    def attack(model, x, y, A=None, B=None, *, generator=None, progress=True, **kwargs):
        goal = y if isinstance(y, Target) else Target(y, A, B)
        if calls is not None:
            calls.append((x.shape[0], kwargs))
        if max_batch is not None and x.shape[0] > max_batch:
            raise torch.OutOfMemoryError("simulated")
        x_adv = (x + shift).clamp(0, 1)
        with torch.no_grad():
            z = model(x_adv)
        n = x.shape[0]
        return AttackResult(x_adv=x_adv, scores=torch.sigmoid(z), logits=z, success=torch.ones(n, dtype=torch.bool),
                            n_satisfied=goal.n_constraints, iterations=torch.ones(n, dtype=torch.long),
                            param=torch.full((n,), float("nan")), kendall_tau=torch.zeros(n))
    return attack


@pytest.mark.unit
def test_run_chunk_projects_rescores_and_splits_on_oom():
    model = _Linear().eval()
    x = torch.full((4, 1, 4, 4), 0.45)
    y = torch.tensor([[False, True]] * 4)
    A = torch.tensor([[True, True]] * 4)
    B = torch.zeros_like(A)
    free = E._run_chunk(_fake_attack(0.1), model, x, Target(y, A, B), {}, (0,), None)
    assert [r["projected"] for r in free] == [False] * 4 and free[0]["success"] is True
    bounded = E._run_chunk(_fake_attack(0.1, max_batch=1), model, x, Target(y, A, B), {}, (0,), 2.0)
    assert len(bounded) == 4 and all(r["projected"] for r in bounded)
    assert all(abs(r["rmsd"] - 2.0) < 1e-3 and r["rmsd_raw"] > 25 for r in bounded)
    # mean pixel 0.45 + 2/255 < 0.5: the label is no longer flipped once the perturbation is bounded
    assert all(r["success"] is False and r["attack_success"] is True for r in bounded)
    # the projected images are re-scored: logits and probabilities of the bounded image
    with torch.no_grad():
        z = model(x + 2 / 255)
    assert all(r["logits_adv"] == pytest.approx(z[0].tolist(), abs=1e-3) for r in bounded)
    assert all(r["scores_adv"] == pytest.approx(torch.sigmoid(z[0]).tolist(), abs=1e-4) for r in bounded)


class _Saturated(torch.nn.Module):
    """Logits (40, 30, -40) + a shift: probabilities (1.0, 1.0, 0.0) in float32, so they tie."""

    def forward(self, x):
        return torch.tensor([40.0, 30.0, -40.0]).expand(x.shape[0], 3) + x.flatten(1).mean(1, keepdim=True)


@pytest.mark.unit
def test_run_chunk_scores_on_logits_and_stores_them():
    model = _Saturated().eval()
    x = torch.zeros(2, 1, 2, 2)
    y = torch.tensor([[False, False, False]] * 2)
    A = torch.tensor([[True, False, False]] * 2)  # y* = (T, F, F): label 0 must rank above label 1
    recs = E._run_chunk(_fake_attack(0.0), model, x, Target(y, A, ~A), {}, (0,), None)
    assert recs[0]["scores_adv"][:2] == [1.0, 1.0]  # tied as probabilities
    assert recs[0]["logits_adv"] == [40.0, 30.0, -40.0]
    # on logits label 0 (40) is above label 1 (30): no ranking error; h = (T, T, F): label 1 wrong in B
    assert recs[0]["ranking_loss"] == 0.0 and recs[0]["auc"] == 1.0 and recs[0]["map"] == 1.0
    assert recs[0]["hamming_A"] == 0.0 and recs[0]["hamming_B"] == 0.5 and recs[0]["success"] is False


@pytest.mark.unit
def test_run_chunk_never_splits_a_scenario_row():
    model = _Linear().eval()
    x = torch.full((4, 1, 4, 4), 0.45)
    y = torch.tensor([[False, True]] * 4)
    A = torch.tensor([[True, True]] * 4)
    calls = []
    with pytest.raises(torch.OutOfMemoryError, match="batch_size"):
        E._run_chunk(_fake_attack(0.1, max_batch=1, calls=calls), model, x, Target(y, A, ~A), {}, (0,), None,
                     split=False)
    assert [c[0] for c in calls] == [4]  # one call, no retry on halves (its ε would change)


@pytest.mark.unit
def test_rows_resolve_params_chunks_and_run_keys():
    from mlnb.presets import ROW_NAMES, get_preset

    preset = get_preset("smoke")
    assert E.row_params(preset, "fgs") == {**preset.attack_params("fgs"), "eps": "scenario"}
    assert E.row_params(preset, "fgs_per_image") == preset.attack_params("fgs")
    assert E.row_params(preset, "ml_dp") == {**preset.attack_params("ml_dp"), "form": "paper"}
    assert E.row_params(preset, "ml_dp_greedy", {"ml_dp_greedy": {"max_iter": 2}, "ml_dp": {"max_iter": 9}}) \
        == {**preset.attack_params("ml_dp"), "max_iter": 2}  # params are keyed by row
    assert E.is_scenario_row(E.row_params(preset, "fg")) and not E.is_scenario_row(E.row_params(preset, "fg_per_image"))
    assert E.plan_chunks(5, 2, False) == [[0, 1], [2, 3], [4]]
    assert E.plan_chunks(5, 2, True) == [[0, 1, 2, 3, 4]] and E.plan_chunks(0, 2, True) == []
    keys = {}
    for row in ROW_NAMES:
        p = E.row_params(preset, row)
        keys[row] = E.run_params(preset, row, p, seed=0, n=8, max_rmsd=None, label=None)
        assert keys[row]["attack"] == row and keys[row]["params"] == p
    assert keys["fgs"]["batch_size"] == "scenario" and "batch_size" not in keys["fgs_per_image"]
    assert len({E.param_hash(k) for k in keys.values()}) == len(ROW_NAMES)  # every row its own run
    with pytest.raises(ValueError, match="fgs_per_image"):
        E.row_params(preset, "fgs_per_img")


def _records() -> list[dict]:
    out = []
    for strategy in ("extreme", "random"):
        for attack in ("rank2", "ml_cw"):
            for i in (3, 1):
                m = {k: float(i) for k in METRIC_KEYS}
                m["hamming_B"] = None if strategy == "extreme" else 0.5
                out.append({"dataset": "animals", "strategy": strategy, "attack": attack, "index": i, "A": [0],
                            "scores_clean": [0.9, 0.1], "scores_adv": [0.2, 0.1], "success": True, "projected": False, **m})
    return out


@pytest.mark.unit
def test_aggregate_orders_rows_like_the_paper_and_skips_nan():
    frame = E.records_frame(_records())
    assert frame["p_clean"].eq(0.9).all() and frame["p_adv"].eq(0.2).all()
    table = E.aggregate(frame, ["random", "extreme"], ["ml_cw", "rank2"])
    assert list(table.columns) == ["RMSD", "Hamming(A)", "Hamming(B)", "F1", "Ranking loss", "mAP", "AUC", "Kendall tau-b",
                                   "Success", "Clean"]
    assert table["Success"].eq(1.0).all() and table["Clean"].eq(0).all()
    assert list(table.index) == [("animals", s, a) for s in ("random", "extreme") for a in ("ml_cw", "rank2")]
    assert table["RMSD"].eq(2.0).all() and table.loc[("animals", "random", "ml_cw"), "Hamming(B)"] == 0.5
    assert math.isnan(table.loc[("animals", "extreme", "rank2"), "Hamming(B)"])
    shuffled = E.aggregate(E.records_frame(_records()[::-1]), ["random", "extreme"], ["ml_cw", "rank2"])
    assert table.to_csv() == shuffled.to_csv()


@pytest.mark.unit
def test_claims_hold_on_the_papers_own_tables_and_report_missing_runs():
    for dataset in ("voc2007", "voc2012"):
        # the two extreme-case Rank II vs Rank I claims are not testable (identical by Eq. 10 when B = ∅)
        assert table4_claims(paper_table(4), dataset)["holds"].tolist() == [True] * 9 + [None] + [True] * 3 + [None]
    five = table5_claims(paper_table(5))
    assert five["holds"].dropna().all() and five["holds"].isna().sum() == 3  # Fig. 1 claims need records
    partial = table4_claims(paper_table(4, "voc2007").drop("ml_dp", level="attack"))
    assert partial.loc[partial["claim"].str.contains("ML-DP"), "holds"].isna().all()
    both = side_by_side(paper_table(4, "voc2007"), paper_table(4))
    assert (both.xs("ours", axis=1, level=1).fillna(-9) == both.xs("paper", axis=1, level=1).fillna(-9)).all().all()


@pytest.mark.unit
def test_cli_help_and_param_parsing():
    assert E._parse_params(["ml_cw.max_iter=20", "rank2.lr=0.1"]) == {"ml_cw": {"max_iter": 20}, "rank2": {"lr": 0.1}}
    with pytest.raises(ValueError, match="ATTACK.KEYWORD"):
        E._parse_params(["max_iter=20"])
    with pytest.raises(SystemExit):
        E.main(["--help"])


@pytest.mark.unit
def test_cli_writes_under_mlnb_results_by_default(tmp_path, monkeypatch):
    import pandas as pd

    seen = {}

    def fake_run(preset, attacks, strategies, *, out_dir, **kw):
        seen["out_dir"] = out_dir
        return E.ExperimentResult(pd.DataFrame({"x": [1.0]}), pd.DataFrame(), {}, {}, {}, out_dir)

    monkeypatch.setenv("MLNB_RESULTS", str(tmp_path))
    monkeypatch.setattr(E, "run_experiment", fake_run)
    E.main(["--preset", "smoke", "--attacks", "fgs"])  # used to write to ./results/experiments wherever it ran
    assert seen["out_dir"] == tmp_path / "experiments" / "runs" and (tmp_path / "experiments" / "table.csv").is_file()


# ----------------------------------------------------------------------------- smoke runs (subprocesses)
def cli_env() -> dict:
    """One thread per process (as torchrun gives each rank), the test session's data / results folders."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def run_cli(out: Path, *extra: str, timeout: int = 240) -> bytes:
    subprocess.run([sys.executable, "-m", "mlnb.experiments", *CLI, "--out", str(out), *extra], check=True,
                   env=cli_env(), timeout=timeout, capture_output=True)
    return (out / "table.csv").read_bytes()


def baseline_table() -> bytes:
    """The uninterrupted one-process table, computed once per test session."""
    out = Path(os.environ["MLNB_RESULTS"]) / "cli_baseline"
    return (out / "table.csv").read_bytes() if (out / "table.csv").is_file() else run_cli(out)


def test_sigkill_and_resume_gives_the_uninterrupted_table(tmp_path):
    reference = baseline_table()
    out = tmp_path / "killed"
    log = tmp_path / "killed.stderr"
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "mlnb.experiments", *CLI, "--out", str(out)], env=cli_env(),
                                stdout=subprocess.DEVNULL, stderr=err)

    def stored_shards():
        return [p for p in out.glob("runs/*/part-*.jsonl") if p.stat().st_size]

    # wait for an event (the first stored batch), not for a time; the timeout only keeps a hung run from
    # hanging the suite, and no assertion depends on how long anything took
    safety_timeout = time.monotonic() + 180
    while not stored_shards():
        if proc.poll() is not None:
            pytest.fail(f"the run exited with code {proc.returncode} before storing a batch:\n"
                        f"{log.read_text(errors='replace')[-2000:]}")
        if time.monotonic() > safety_timeout:
            proc.kill()
            proc.wait()
            pytest.fail("no batch stored after 180 s (safety timeout): the run hangs or never writes a shard")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the run finished (code {proc.returncode}) before the kill"
    shards = stored_shards()
    assert shards and not (out / "table.csv").exists()
    with open(shards[0], "ab") as fh:  # and a half-written line, as a kill inside write() leaves
        fh.write(b'{"index": 99999, "rmsd": 1.2')
    assert run_cli(out) == reference
    assert run_cli(out) == reference  # a finished run reruns to the same bytes


def test_same_seed_gives_byte_identical_tables_and_another_seed_differs(tmp_path):
    reference = baseline_table()
    assert run_cli(tmp_path / "again") == reference
    assert run_cli(tmp_path / "seed1", "--seed", "1") != reference


def test_runner_runs_rows_and_attacks_a_scenario_row_in_one_call(tmp_path, monkeypatch):
    """Fake attacks on the smoke model: the paper row ``fgs`` (ε per scenario) is one call over all the
    images, ``fgs_per_image`` runs in chunks, ``ml_dp_greedy`` calls ``ml_dp``; row names reach the
    records, the run keys and the table; a rerun with another batch size recomputes nothing."""
    from mlnb import attacks

    calls = {"fgs": [], "ml_dp": []}
    monkeypatch.setitem(attacks.ATTACKS, "fgs", _fake_attack(0.02, calls=calls["fgs"]))
    monkeypatch.setitem(attacks.ATTACKS, "ml_dp", _fake_attack(0.0, calls=calls["ml_dp"]))
    rows = ["fgs", "fgs_per_image", "ml_dp_greedy"]
    kw = dict(out_dir=tmp_path, n=6, device="cpu", progress=False)
    res = E.run_experiment("smoke", rows, "random", batch_size=2, **kw)
    n = int((res.records["attack"] == "fgs").sum())
    assert n >= 3 and len(res.records) == 3 * n
    scenario = [size for size, p in calls["fgs"] if p.get("eps") == "scenario"]
    per_image = [size for size, p in calls["fgs"] if "eps" not in p]
    assert scenario == [n] and sum(per_image) == n and max(per_image) <= 2 and len(per_image) > 1
    assert [("form" in p) for _, p in calls["ml_dp"]] == [False] * len(calls["ml_dp"])  # mlnb's form
    assert list(res.table.index.get_level_values("attack")) == rows
    assert {p.name.split("__")[3] for p in tmp_path.iterdir()} == set(rows)
    assert res.table.loc[("animals", "random", "ml_dp_greedy"), "Clean"] == n  # fallbacks: counted,
    assert math.isnan(res.table.loc[("animals", "random", "ml_dp_greedy"), "RMSD"])  # and out of RMSD
    assert all(len(v) == len(res.label_names["animals"]) for v in res.records["logits_adv"])
    before = {k: len(v) for k, v in calls.items()}
    again = E.run_experiment("smoke", rows, "random", batch_size=3, **kw)
    assert {k: len(v) for k, v in calls.items()} == before  # batch_size is not in the run keys
    assert again.table.to_csv() == res.table.to_csv()


@pytest.mark.unit
def test_paper_preset_without_voc_names_the_folder_and_the_download_flag(tmp_path, monkeypatch):
    monkeypatch.setenv("MLNB_DATA", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="download"):
        E.run_experiment("paper", "ml_cw", "random", out_dir=tmp_path)


# ----------------------------------------------------------------------------- found by mutation testing
# (docs/MUTATION.md): the RMSD projection at and below the bound, and what _load asks of the data and
# model loaders on each rank (the CLI tests above reach it only in a subprocess)

from mlnb.presets import get_preset  # noqa: E402


def _rmsd(x, x_adv):
    return ((x_adv - x) * 255.0).flatten(1).pow(2).mean(1).sqrt()


@pytest.mark.unit
def test_projection_leaves_a_perturbation_exactly_at_the_bound_alone_and_flags_it_unprojected():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 4, 4, generator=g) * 0.5
    x_adv = x + torch.rand(3, 1, 4, 4, generator=g) * 0.1
    bound = float(_rmsd(x, x_adv)[1])  # image 1 sits exactly on the bound
    out, projected = E.project_rmsd(x, x_adv, bound)
    assert not projected[1] and torch.equal(out[1], x_adv[1])


@pytest.mark.unit
@pytest.mark.parametrize("noise, bound", [(0.004, 0.2), (0.004, 0.45), (0.2, 5.0)])
def test_projection_lands_on_the_bound_also_for_radii_below_one(noise, bound):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 3, 5, 5, generator=g) * 0.5
    x_adv = x + torch.rand(4, 3, 5, 5, generator=g) * noise  # RMSD about 0.6 (noise 0.004) or 30 (0.2)
    assert (_rmsd(x, x_adv) > bound).all()
    out, projected = E.project_rmsd(x, x_adv, bound)
    assert projected.all()
    torch.testing.assert_close(_rmsd(x, out), torch.full((4,), bound), rtol=1e-5, atol=0)


class _Spy:
    def __init__(self, result=None):
        self.calls, self.result = [], result

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self.result


class _Model(torch.nn.Module):
    pass


@pytest.fixture
def spies(monkeypatch):
    from mlnb import data, training

    loads, barrier = _Spy(result="test-set"), _Spy()
    model = _Model().train()
    target = _Spy(result=(model, {"path": "/cache/models/smoke_small_cnn_ab12.pt"}))
    monkeypatch.setattr(data, "load_dataset", loads)
    monkeypatch.setattr(training, "get_target_model", target)
    monkeypatch.setattr(E, "_barrier", barrier)
    return loads, target, barrier


@pytest.mark.unit
@pytest.mark.parametrize("dataset, train_split", [("voc2007", "trainval"), ("voc2012", "train")])
def test_rank_zero_downloads_both_splits_first_then_loads_model_and_test_set(spies, dataset, train_split):
    loads, target, barrier = spies
    preset = get_preset("smoke")
    model, ds, model_id = E._load(preset, dataset, "cpu", True, 0, 2, download=True)
    size = preset.image_size
    assert loads.calls == [
        ((dataset, train_split), {"n_examples": 1, "image_size": size, "download": True}),
        ((dataset, "test"), {"n_examples": 1, "image_size": size, "download": True}),
        ((dataset, "test"), {"n_examples": preset.n_test, "image_size": size}),
    ]
    assert target.calls == [((preset,), {"device": "cpu", "progress": True, "dataset": dataset})]
    assert barrier.calls == [((2,), {})]  # after the model is cached, so the other ranks can read it
    assert ds == "test-set" and not model.training and model_id == "smoke_small_cnn_ab12"


@pytest.mark.unit
def test_other_ranks_wait_first_never_download_and_stay_quiet(spies):
    loads, target, barrier = spies
    preset = get_preset("smoke")
    E._load(preset, "voc2007", "cpu", True, 1, 2, download=True)
    assert barrier.calls == [((2,), {})]
    assert [c[0] for c in loads.calls] == [("voc2007", "test")]
    assert target.calls[0][1]["progress"] is False


@pytest.mark.unit
def test_offline_data_sets_are_not_downloaded(spies):
    loads, _, _ = spies
    E._load(get_preset("smoke"), "animals", "cpu", False, 0, 1, download=True)
    assert [c[0] for c in loads.calls] == [("animals", "test")]


@pytest.mark.unit
@pytest.mark.parametrize("info, want", [({"model_id": "m1", "hash": "h", "path": "/a/p.pt"}, "m1"),
                                        ({"hash": "h2", "path": "/a/p.pt"}, "h2"),
                                        ({"path": "/a/p.pt"}, "p"), ({}, "small_cnn"), (None, "small_cnn"),
                                        ({"path": "/a/p.pt", "weights_sha256": "0123abcd"}, "p-w0123abcd")])
def test_model_id_prefers_the_id_then_the_hash_then_the_file_name(spies, monkeypatch, info, want):
    from mlnb import training

    monkeypatch.setattr(training, "get_target_model", _Spy(result=(_Model(), info)))
    assert E._load(get_preset("smoke"), "animals", "cpu", False, 0, 1)[2] == want


@pytest.mark.unit
def test_progress_bar_wraps_only_a_non_empty_enabled_loop():
    items = [3, 1, 2]
    assert E._bar(items, False, "x") is items and E._bar([], True, "x") == []
    bar = E._bar(items, True, "rows")
    assert list(bar) == items and bar.desc == "rows" and bar.leave is False


@pytest.mark.unit
def test_barrier_waits_only_with_several_processes(monkeypatch):
    import torch.distributed as dist

    calls = _Spy()
    monkeypatch.setattr(dist, "barrier", calls)
    E._barrier(1)
    assert calls.calls == []
    E._barrier(2)
    assert calls.calls == [((), {})]


@pytest.mark.unit
@pytest.mark.parametrize("device, backend, want", [("cpu", "gloo", "cpu"), ("cuda", "nccl", "cuda:3"),
                                                   ("xpu", "nccl", "xpu:3")])
def test_dist_context_joins_torchruns_group_with_the_backend_of_the_device(monkeypatch, device, backend, want):
    import torch.distributed as dist

    init = _Spy()
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", init)
    monkeypatch.setattr(dist, "get_rank", lambda: 2)
    monkeypatch.setattr(dist, "get_world_size", lambda: 4)
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun's variables; the group's own size is what counts
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert E.dist_context(torch.device(device)) == (2, 4, torch.device(want), True)
    assert init.calls == [((), {"backend": backend})]
    monkeypatch.setattr(dist, "is_initialized", lambda: True)  # a group made by the caller is not ours
    assert E.dist_context(torch.device(device))[3] is False and len(init.calls) == 1


@pytest.mark.unit
def test_dist_context_is_one_process_without_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert E.dist_context(torch.device("cpu")) == (0, 1, torch.device("cpu"), False)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert E.dist_context(torch.device("cpu")) == (0, 1, torch.device("cpu"), False)


@pytest.mark.unit
def test_dist_context_without_local_rank_uses_device_zero(monkeypatch):
    import torch.distributed as dist

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda: 0)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert E.dist_context(torch.device("cuda"))[2] == torch.device("cuda", 0)


# ----------------------------------------------------------------------------- found by the mutation sample
# (docs/mutation-sample.txt): the draw's documented seeding, and what run_experiment hands each part

@pytest.mark.unit
def test_draw_targets_follows_its_documented_seeding():
    """The targets come from a generator seeded by (seed, dataset, strategy, "target"), the draw from a
    permutation seeded by (seed, dataset, strategy, "draw"): rebuilt here from that recipe."""
    from mlnb.experiment_plan import derive_seed
    from mlnb.labels import make_target

    g = torch.Generator().manual_seed(3)
    y = torch.rand(40, 6, generator=g) < 0.5
    X = torch.arange(0, 40, 2)
    for seed, dataset, strategy in ((0, "animals", "random"), (5, "voc2007", "random"), (5, "voc2007", "extreme")):
        idx, goal, n_el = E.draw_targets(y, X, strategy, 6, seed=seed, dataset=dataset)
        t = make_target(strategy, y[X], generator=torch.Generator().manual_seed(
            derive_seed(seed, dataset, strategy, "target")))
        el = t.eligible.nonzero().flatten()
        perm = torch.randperm(len(el), generator=torch.Generator().manual_seed(
            derive_seed(seed, dataset, strategy, "draw")))
        pick = el[perm[:6]].sort().values
        assert n_el == len(el) and torch.equal(idx, X[pick])
        assert torch.equal(goal.A, t.A[pick]) and torch.equal(goal.B, t.B[pick]) and torch.equal(goal.y, y[idx])


@pytest.mark.unit
def test_runner_hands_rank_device_progress_and_ids_to_its_parts(tmp_path, monkeypatch):
    """Defaults (device "auto", n from the preset), the rank and device given to _load, the progress bar
    on rank 0 only, progress=False to the attack (the runner draws its own bars) and the stored image ids."""
    from mlnb import attacks

    seen = {"load": [], "bar": [], "progress": [], "target": []}
    load, bar = E._load, E._bar

    def spy_load(*args, **kwargs):
        seen["load"].append(args)
        seen["loaded"] = load(*args, **kwargs)
        return seen["loaded"]

    def spy_bar(items, enabled, desc):
        seen["bar"].append(enabled)
        return bar(items, False, desc)

    fake = _fake_attack(0.0)

    def attack(model, x, target, *, generator=None, progress=True, **kw):
        seen["progress"].append(progress)
        seen["target"].append(isinstance(target, Target))  # the runner passes the images' Target
        return fake(model, x, target, generator=generator, progress=progress, **kw)

    monkeypatch.setattr(E, "_load", spy_load)
    monkeypatch.setattr(E, "_bar", spy_bar)
    monkeypatch.setitem(attacks.ATTACKS, "ml_dp", attack)
    res = E.run_experiment("smoke", "ml_dp", "random", out_dir=tmp_path)  # default device and n
    preset = get_preset("smoke")
    (args,) = seen["load"]
    assert args[2] == E.resolve_device("auto") and args[4:6] == (0, 1)  # device, rank 0 of 1 process
    assert seen["bar"] == [True] and seen["progress"] and not any(seen["progress"])
    assert seen["target"] and all(seen["target"])
    n = len(res.records)
    assert n == min(preset.n_general, res.eligible[("animals", "random")])
    ds = seen["loaded"][1]  # the test set the runner attacked
    assert list(res.records["image_id"]) == [ds.ids[i] for i in res.records["index"]]
    with pytest.raises(ValueError, match="^unknown strategy 'bogus'"):
        E.run_experiment("smoke", "ml_dp", "bogus", out_dir=tmp_path)


@pytest.mark.unit
def test_run_chunk_stores_the_attacks_own_fields_under_their_names():
    model = _Saturated().eval()
    x = torch.zeros(2, 1, 2, 2)
    y = torch.tensor([[False, False, False]] * 2)
    A = torch.tensor([[True, False, False]] * 2)
    recs = E._run_chunk(_fake_attack(0.0), model, x, Target(y, A, ~A), {}, (0,), None)
    for r in recs:
        assert (r["attack_success"], r["n_satisfied"], r["iterations"]) == (True, 3, 1)
        assert math.isnan(r["param"]) and r["attack_kendall_tau"] == 0.0
        assert r["projected"] is False and r["rmsd_raw"] == 0.0


@pytest.mark.unit
def test_runner_takes_images_per_strategy_from_a_dict_and_passes_download_on(tmp_path, monkeypatch):
    from mlnb import attacks

    asked = []
    check = E.check_data_available

    def spy(preset, *, download):
        asked.append(download)
        return check(preset, download=download)

    monkeypatch.setattr(E, "check_data_available", spy)
    monkeypatch.setitem(attacks.ATTACKS, "ml_dp", _fake_attack(0.0))
    monkeypatch.setitem(attacks.ATTACKS, "fgs", _fake_attack(0.0))
    res = E.run_experiment("smoke", "ml_dp,fgs_per_image", "random,extreme", out_dir=tmp_path, device="cpu",
                           progress=False, n={"random": 2, "extreme": 3}, download=True)
    assert res.records.groupby("strategy").size().to_dict() == {"extreme": 6, "random": 4}
    # the table keeps the order the rows were asked in (not the paper's, where fgs_per_image comes later)
    assert list(res.table.index.get_level_values("attack")) == ["ml_dp", "fgs_per_image"] * 2
    assert res.store_root == tmp_path
    assert asked == [True]  # the offline data set needs no download, but the flag reaches the check


class _AtThreshold(torch.nn.Module):
    """Logits (0, -40, -40): label 0 exactly at the threshold (probability 0.5)."""

    def forward(self, x):
        return torch.tensor([0.0, -40.0, -40.0]).expand(x.shape[0], 3) + 0 * x.flatten(1).mean(1, keepdim=True)


@pytest.mark.unit
def test_run_chunk_counts_a_logit_of_exactly_zero_as_positive():
    """Eq. (3b): a label is positive when F >= 0.5, i.e. logit >= 0; switching label 0 on succeeds at 0."""
    x = torch.zeros(1, 1, 2, 2)
    y = torch.tensor([[False, False, False]])
    A = torch.tensor([[True, False, False]])
    (rec,) = E._run_chunk(_fake_attack(0.0), _AtThreshold().eval(), x, Target(y, A, ~A), {}, (0,), None)
    assert rec["success"] is True and rec["hamming_A"] == 0.0
