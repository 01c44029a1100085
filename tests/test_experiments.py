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
from mlnb.attack_core import AttackResult
from mlnb.claims import table4_claims, table5_claims
from mlnb.paper_results import paper_table, side_by_side

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
    X = E.attack_set(scores, y)
    assert X.tolist() == [0, 2, 3, 4, 5]
    a = E.draw_targets(y, X, "random", 3, seed=7)
    b = E.draw_targets(y, X, "random", 3, seed=7)
    assert all(torch.equal(u, v) for u, v in zip(a[:3], b[:3]))
    idx, A, B, n_el = a
    assert n_el == 4 and idx.tolist() == sorted(idx.tolist()) and 5 not in idx.tolist()  # all-positive: ineligible
    assert (A.sum(1) == 2).all() and not (A & B).any()
    idx, A, B, n_el = E.draw_targets(y, X, "reduce", 10, seed=7, label=0, names=None)
    assert idx.tolist() == [0, 2, 5] and n_el == 3 and A[:, 0].all()  # label 0 positive, >= 2 positives
    idx, *_ = E.draw_targets(y, X, "extreme", 10, seed=1)
    assert idx.tolist() == X.tolist()


@pytest.mark.unit
@pytest.mark.parametrize("kwargs, word", [({"attacks": "ml_cw,nope"}, "ml_cw"), ({"strategies": ["bogus"]}, "random"),
                                          ({"preset": "huge"}, "smoke"), ({"max_rmsd": -1.0}, "max_rmsd")])
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


def _fake_attack(shift: float, max_batch: int | None = None):
    def attack(model, x, y, A, B, *, generator=None, progress=True):
        if max_batch is not None and x.shape[0] > max_batch:
            raise torch.OutOfMemoryError("simulated")
        x_adv = (x + shift).clamp(0, 1)
        s = torch.sigmoid(model(x_adv))
        n = x.shape[0]
        return AttackResult(x_adv, s, torch.ones(n, dtype=torch.bool), (A | B).sum(1), torch.ones(n, dtype=torch.long),
                            torch.full((n,), float("nan")), torch.zeros(n))
    return attack


@pytest.mark.unit
def test_run_chunk_projects_rescores_and_splits_on_oom():
    model = _Linear().eval()
    x = torch.full((4, 1, 4, 4), 0.45)
    y = torch.tensor([[False, True]] * 4)
    A = torch.tensor([[True, True]] * 4)
    B = torch.zeros_like(A)
    free = E._run_chunk(_fake_attack(0.1), model, x, y, A, B, {}, (0,), None)
    assert [r["projected"] for r in free] == [False] * 4 and free[0]["success"] is True
    bounded = E._run_chunk(_fake_attack(0.1, max_batch=1), model, x, y, A, B, {}, (0,), 2.0)
    assert len(bounded) == 4 and all(r["projected"] for r in bounded)
    assert all(abs(r["rmsd"] - 2.0) < 1e-3 and r["rmsd_raw"] > 25 for r in bounded)
    # mean pixel 0.45 + 2/255 < 0.5: the label is no longer flipped once the perturbation is bounded
    assert all(r["success"] is False and r["attack_success"] is True for r in bounded)


def _records() -> list[dict]:
    out = []
    for strategy in ("extreme", "random"):
        for attack in ("rank2", "ml_cw"):
            for i in (3, 1):
                m = {k: float(i) for k in E.METRIC_KEYS}
                m["hamming_B"] = None if strategy == "extreme" else 0.5
                out.append({"dataset": "animals", "strategy": strategy, "attack": attack, "index": i, "A": [0],
                            "scores_clean": [0.9, 0.1], "scores_adv": [0.2, 0.1], "success": True, "projected": False, **m})
    return out


@pytest.mark.unit
def test_aggregate_orders_rows_like_the_paper_and_skips_nan():
    frame = E.records_frame(_records())
    assert frame["p_clean"].eq(0.9).all() and frame["p_adv"].eq(0.2).all()
    table = E.aggregate(frame, ["random", "extreme"], ["ml_cw", "rank2"])
    assert list(table.columns) == ["RMSD", "Hamming(A)", "Hamming(B)", "F1", "Ranking loss", "mAP", "AUC", "Kendall tau-b"]
    assert list(table.index) == [("animals", s, a) for s in ("random", "extreme") for a in ("ml_cw", "rank2")]
    assert table["RMSD"].eq(2.0).all() and table.loc[("animals", "random", "ml_cw"), "Hamming(B)"] == 0.5
    assert math.isnan(table.loc[("animals", "extreme", "rank2"), "Hamming(B)"])
    shuffled = E.aggregate(E.records_frame(_records()[::-1]), ["random", "extreme"], ["ml_cw", "rank2"])
    assert table.to_csv() == shuffled.to_csv()


@pytest.mark.unit
def test_claims_hold_on_the_papers_own_tables_and_report_missing_runs():
    for dataset in ("voc2007", "voc2012"):
        assert table4_claims(paper_table(4), dataset)["holds"].tolist() == [True] * 13
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
    proc = subprocess.Popen([sys.executable, "-m", "mlnb.experiments", *CLI, "--out", str(out)], env=cli_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if any(p.stat().st_size for p in out.glob("runs/*/part-*.jsonl")):
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    shards = [p for p in out.glob("runs/*/part-*.jsonl") if p.stat().st_size]
    assert proc.returncode == -signal.SIGKILL and shards and not (out / "table.csv").exists()
    with open(shards[0], "ab") as fh:  # and a half-written line, as a kill inside write() leaves
        fh.write(b'{"index": 99999, "rmsd": 1.2')
    assert run_cli(out) == reference
    assert run_cli(out) == reference  # a finished run reruns to the same bytes


def test_same_seed_gives_byte_identical_tables_and_another_seed_differs(tmp_path):
    reference = baseline_table()
    assert run_cli(tmp_path / "again") == reference
    assert run_cli(tmp_path / "seed1", "--seed", "1") != reference


@pytest.mark.unit
def test_paper_preset_without_voc_names_the_folder_and_the_download_flag(tmp_path, monkeypatch):
    monkeypatch.setenv("MLNB_DATA", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="download"):
        E.run_experiment("paper", "ml_cw", "random", out_dir=tmp_path)
