"""Scale-out: ``torchrun --nproc_per_node=2`` (gloo, CPU) gives the table of one process, byte for byte,
each rank writing its own shard and rank 0 merging them."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

CLI = ["--preset", "smoke", "--attacks", "ml_cw,rank2", "--strategies", "random,extreme", "--n-images", "6",
       "--batch-size", "2", "--no-progress"]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _baseline() -> bytes:
    """The one-process table (shared with tests/test_experiments.py through the session's results folder)."""
    out = Path(os.environ["MLNB_RESULTS"]) / "cli_baseline"
    if not (out / "table.csv").is_file():
        subprocess.run([sys.executable, "-m", "mlnb.experiments", *CLI, "--out", str(out)], check=True, env=_env(),
                       timeout=240, capture_output=True)
    return (out / "table.csv").read_bytes()


def test_torchrun_two_processes_give_the_one_process_table(tmp_path):
    reference = _baseline()
    out = tmp_path / "torchrun"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "mlnb.experiments", *CLI, "--out", str(out)], env=_env(), timeout=300,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "table.csv").read_bytes() == reference
    runs = sorted((out / "runs").iterdir())
    assert len(runs) == 4  # (ml_cw, rank2) x (random, extreme)
    for run in runs:  # merged, in index order, shards removed
        assert not list(run.glob("part-*.jsonl"))
        idx = [json.loads(x)["index"] for x in (run / "results.jsonl").read_text().splitlines()]
        assert idx == sorted(idx) and len(idx) == 6
