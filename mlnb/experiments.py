"""The experiment runner of Sec. IV-E to IV-G: Tables IV and V, resumable and shardable.

    python -m mlnb.experiments --preset smoke --attacks ml_cw,rank2 --strategies random,extreme --out DIR
    torchrun --nproc_per_node=2 -m mlnb.experiments --preset smoke ...      # same table, two processes

The runner runs table *rows* (:data:`mlnb.presets.ROW_NAMES`): the six paper rows ``fgs, fg, ml_cw,
ml_dp, rank1, rank2`` run the paper's form of each attack (:data:`mlnb.presets.PAPER_FORMS`: one ε per
scenario for FGS / FG, Algorithm 1 as printed for ML-DP); the extra rows ``fgs_per_image``,
``fg_per_image`` and ``ml_dp_greedy`` run mlnb's own forms beside them.

Steps (Sec. IV-E): the attack set ``X`` = test images whose *every* label the model classifies
correctly at threshold 0.5; for each strategy, the images of ``X`` it applies to (the generator's
``eligible`` mask); ``N`` of them drawn with a ``torch.Generator`` seeded from ``(seed, data set,
strategy)``, so the images and targets depend on the seed only (never on the attacks asked for or
on the number of processes); each row run on fixed chunks of ``attack_batch_size`` images (sorted by
data-set index; chunk ``k`` goes to rank ``k mod world_size`` with a generator seeded by ``(seed,
data set, row, strategy, k)``; no attack draws from it; ``batch_size`` is not in the run key: it changes
no formula, only the model's last bits: README, resume; records keep ``chunk``), except a row whose ε is
chosen on the scenario (``eps="scenario"``): it is attacked in *one* call (the attack splits it memory-wise with its
own ``batch_size``), so that its ε is the scenario's; per-image metrics (on the logits,
:func:`mlnb.metrics.per_image_metrics`) appended to a :class:`mlnb.store.ResultStore` after every
chunk; and the table, aggregated in data-set index order from what is on disk.

**Distortion control** (Sec. IV-D, "we control the upper bound of the RMSD to search the best
perturbations"): with ``max_rmsd`` set (0-255 scale), each attack first searches its best
perturbation ``r = x_adv - x`` as usual; a perturbation whose RMSD exceeds the bound is then
*projected onto the bound*, ``r <- r * max_rmsd / RMSD(r)`` (``x + r`` stays in ``[0, 1]``: it lies
between ``x`` and the attack's ``x_adv``), and the model re-scores it. So every method is compared
at the same distortion budget, keeps its own direction, and is never charged more than the bound; a
projected image counts as a success only if its re-scored labels still meet the target. Each
record keeps ``rmsd_raw`` (before projection) and ``projected``.

``success`` in the records is the classification target met on ``A ∪ B`` (``h(x_adv) = y*``, by
``logit >= 0``), computed the same way for every row; ``attack_success`` is the attack's own flag.
Records keep ``scores_adv`` (probabilities, Fig. 1) and ``logits_adv``.

On a GPU out-of-memory error a chunk is attacked in smaller pieces (:func:`mlnb.utils.run_in_chunks`,
the one policy the attacks use too); a scenario-ε row is never split (its ε would change): pass its
attack a smaller ``batch_size``.

Introduced in notebooks/06_general_attacks.ipynb.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from .experiment_plan import (GENERAL, SCORE_BATCH, attack_set, check_counts, draw_targets, is_scenario_row,
                              plan_chunks, project_rmsd, resolve_params, row_params,  # noqa: F401 (row_params: public)
                              run_params, seeded_generator, split_names)
from .labels import STRATEGIES
from .metrics import per_image_metrics
from .presets import ATTACK_NAMES, ROW_NAMES, Preset, check_data_available, get_preset, row_attack
from .store import ResultStore, aggregate, aggregate_ci, records_frame, run_key
from .target import Target
from .utils import param_hash, resolve_device, run_in_chunks
from .validate import check_positive

# ----------------------------------------------------------------------------- distributed helpers
def dist_context(device: torch.device) -> tuple[int, int, torch.device, bool]:
    """``(rank, world_size, device, initialised_here)``: joins the ``torchrun`` process group when
    ``WORLD_SIZE > 1`` (``nccl`` for GPU tensors, ``gloo`` on CPU); one process otherwise."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, device, False
    if device.type != "cpu":
        device = torch.device(device.type, int(os.environ.get("LOCAL_RANK", "0")))
    created = False
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo" if device.type == "cpu" else "nccl")
        created = True
    return dist.get_rank(), dist.get_world_size(), device, created


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


# ----------------------------------------------------------------------------- running one chunk
RESULT_FIELDS = ("x_adv", "logits", "scores", "success", "n_satisfied", "iterations", "param", "kendall_tau")


def _run_chunk(fn, model, x, target: Target, params, seed_parts, max_rmsd, *, split: bool = True):
    """Attack one chunk; returns the per-image record fields. On out-of-memory the chunk is attacked in
    smaller pieces (:func:`mlnb.utils.run_in_chunks`, the attacks' own policy) when ``split``; a scenario-ε
    row (``split=False``) is attacked in one call, whose ε depends on every image of the call."""
    def attack(sl: slice) -> dict:
        whole = sl.start == 0 and sl.stop == x.shape[0]
        gen = seeded_generator(*seed_parts) if whole else seeded_generator(*seed_parts, sl.start, sl.stop)
        r = fn(model, x[sl], target[sl], generator=gen, progress=False, **params)
        return {k: getattr(r, k).detach() for k in RESULT_FIELDS}

    if split:
        res = run_in_chunks(x.shape[0], None, x.device, attack)
    else:
        try:
            res = attack(slice(0, x.shape[0]))
        except torch.OutOfMemoryError as err:
            raise torch.OutOfMemoryError(
                f"out of memory attacking a scenario-ε row ({x.shape[0]} images in one call, so that one ε "
                f"serves the whole scenario): pass its attack a smaller batch_size, e.g. "
                f"--param ROW.batch_size=8 ({err})") from err
    x_adv, logits, scores = res["x_adv"], res["logits"], res["scores"]
    rmsd_raw = (x_adv - x).mul(255.0).flatten(1).pow(2).mean(1).sqrt()
    projected = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    if max_rmsd is not None:
        x_adv, projected = project_rmsd(x, x_adv, max_rmsd)
        if projected.any():
            with torch.no_grad():
                relogits = model(x_adv[projected]).float()
            logits, scores = logits.clone(), scores.clone()
            logits[projected] = relogits.to(logits.dtype)
            scores[projected] = torch.sigmoid(relogits).to(scores.dtype)
    per = per_image_metrics(logits, x, x_adv, target.y, target.A, target.B)
    cols = {**per, "success": target.met(logits), "attack_success": res["success"], "n_satisfied": res["n_satisfied"],
            "iterations": res["iterations"], "param": res["param"], "attack_kendall_tau": res["kendall_tau"],
            "projected": projected, "rmsd_raw": rmsd_raw, "scores_adv": scores, "logits_adv": logits}
    cols = {k: torch.as_tensor(v).detach().cpu().tolist() for k, v in cols.items()}
    return [{k: v[i] for k, v in cols.items()} for i in range(x.shape[0])]


# ----------------------------------------------------------------------------- the runner
@dataclass
class ExperimentResult:
    """What :func:`run_experiment` returns.

    ``table``: the paper's table, index ``(dataset, strategy, attack)``, columns :data:`mlnb.store.TABLE_COLUMNS`
    (means over images, NaN-aware); ``records``: one row per (dataset, strategy, attack, image);
    ``attack_set_size`` ``{dataset: |X|}``; ``eligible`` ``{(dataset, strategy): eligible images in X}``.
    """

    table: pd.DataFrame
    records: pd.DataFrame
    attack_set_size: dict = field(default_factory=dict)
    eligible: dict = field(default_factory=dict)
    label_names: dict = field(default_factory=dict)
    store_root: Path | None = None

    def overview(self, dataset: str) -> str:
        """One line: ``|X|`` of ``dataset`` and the images of ``X`` eligible for each strategy."""
        eligible = ", ".join(f"{s} {n}" for (d, s), n in self.eligible.items() if d == dataset)
        return f"{dataset}: |X| = {self.attack_set_size[dataset]} correctly classified test images; eligible: {eligible}"

    def with_intervals(self, dataset: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        """``(table, lo, hi)`` of ``dataset``: the means of :attr:`table` and their 95% bootstrap intervals
        over images (:func:`mlnb.store.aggregate_ci`), index ``(strategy, attack)`` in the order run."""
        table = self.table.xs(dataset, level="dataset")
        strategies = list(dict.fromkeys(table.index.get_level_values("strategy")))
        attacks = list(dict.fromkeys(table.index.get_level_values("attack")))
        lo, hi = (t.xs(dataset, level="dataset") for t in aggregate_ci(self.records, strategies, attacks))
        return table, lo, hi


def _load(preset: Preset, dataset: str, device, progress: bool, rank: int, world: int, download: bool = False):
    """Target model and test set (rank 0 trains / caches the model first, the others then load it)."""
    from .data import load_dataset
    from .training import get_target_model

    if rank != 0:
        _barrier(world)
    elif download and dataset.startswith("voc"):  # fetch the training and test splits once, on rank 0
        for split in ("trainval" if dataset == "voc2007" else "train", "test"):
            load_dataset(dataset, split, n_examples=1, image_size=preset.image_size, download=True)
    model, info = get_target_model(preset, device=device, progress=progress and rank == 0, dataset=dataset)
    if rank == 0:
        _barrier(world)
    ds = load_dataset(dataset, "test", n_examples=preset.n_test, image_size=preset.image_size)
    info = info if isinstance(info, dict) else {}  # the id names the checkpoint and, when known, its weights
    model_id = Path(str(info.get("model_id") or info.get("hash") or info.get("path", preset.backbone))).stem
    return model.eval(), ds, model_id + (f"-w{info['weights_sha256']}" if info.get("weights_sha256") else "")


def run_experiment(preset: str | Preset, attacks=ATTACK_NAMES, strategies=GENERAL, *, out_dir: str | Path,
                   seed: int = 0, device: str | torch.device = "auto", n: int | dict | None = None,
                   max_rmsd: float | None = ..., params: dict | None = None, batch_size: int | None = None,
                   download: bool = False, progress: bool = True) -> ExperimentResult:
    """Run the table rows ``attacks`` x ``strategies`` on the preset's target model(s); resumable and shardable.

    Args:
        preset: a name of :data:`mlnb.presets.PRESETS` or a :class:`Preset`.
        attacks: table rows of :data:`mlnb.presets.ROW_NAMES` (list or comma-separated; default the
            paper's six). A row runs ``ATTACKS[row_attack(row)]`` with :func:`row_params`; its name goes
            into the records' ``attack`` field, the run key and the table index.
        strategies: names of :data:`mlnb.labels.STRATEGIES` (list or comma-separated; ``reduce`` /
            ``augment`` use ``preset.reduce_label`` / ``preset.augment_label``).
        out_dir: the store root; per-image results go to ``out_dir/<run key>/`` (see :mod:`mlnb.store`).
        seed: fixes the images drawn and the random-case targets (no attack draws random numbers).
        n: images per strategy (int or ``{strategy: int}``); default ``preset.n_general`` / ``n_label_specified``.
        max_rmsd: RMSD bound (0-255) with the projection rule of the module docstring; default the preset's.
        params: ``{row: {keyword: value}}`` overriding the row's resolved parameters (that row only:
            ``{"fgs": ...}`` does not reach ``fgs_per_image``).
        batch_size: images per chunk (default ``preset.attack_batch_size``); not in the run key (it changes the
            model's last bits only; see the module docstring); ignored by a scenario-ε row (attacked in one call).
        download: let torchvision fetch PASCAL VOC (``paper`` preset) when it is missing; without it a
            missing VOC folder raises ``FileNotFoundError`` naming the folder, before any work.

    Images ``x`` ``(N, C, H, W)`` in ``[0, 1]`` and masks ``(N, L)`` bool follow ``docs/ARCHITECTURE.md``.
    Under ``torchrun`` every rank calls this; all ranks return the same result.
    """
    from .attacks import ATTACKS
    from .models import predict_logits

    preset = get_preset(preset) if isinstance(preset, str) else preset
    attacks, strategies = split_names(attacks, ROW_NAMES, "attack"), split_names(strategies, STRATEGIES, "strategy")
    datasets = preset.datasets  # one target model per data set (Table IV: VOC 2007 and VOC 2012)
    max_rmsd = preset.max_rmsd if max_rmsd is ... else max_rmsd
    if max_rmsd is not None:
        check_positive("max_rmsd", max_rmsd)
    check_data_available(preset, download=download)
    check_counts(strategies, n, seed)
    resolved = resolve_params(preset, attacks, params or {})  # checked before the target model is trained
    rank, world, dev, created = dist_context(resolve_device(device))
    store_root = Path(out_dir)
    if batch_size is not None:
        check_positive("batch_size", batch_size, integer=True)
    bs = int(batch_size or preset.attack_batch_size)
    rows, sizes, eligible, label_names, stores = [], {}, {}, {}, []
    try:
        for dataset in datasets:
            model, ds, model_id = _load(preset, dataset, dev, progress, rank, world, download)
            y_all = ds.labels
            logits_all = predict_logits(model, ds, batch_size=SCORE_BATCH)  # X is decided on them
            scores_all, X = torch.sigmoid(logits_all).cpu(), attack_set(logits=logits_all.cpu(), y=y_all)
            sizes[dataset], label_names[dataset] = int(len(X)), ds.label_names
            for strategy in strategies:
                label = {"reduce": preset.reduce_label, "augment": preset.augment_label}.get(strategy)
                n_s = n.get(strategy) if isinstance(n, dict) else n
                n_s = int(n_s if n_s is not None else (preset.n_general if strategy in GENERAL else preset.n_label_specified))
                idx, goal, n_el = draw_targets(y_all, X, strategy, n_s, seed=seed, dataset=dataset,
                                               label=label, names=ds.label_names)
                eligible[(dataset, strategy)] = n_el
                for attack in attacks:  # a table row
                    p, scenario = resolved[attack], is_scenario_row(resolved[attack])
                    chunks = plan_chunks(len(idx), bs, scenario)
                    key = run_key(preset=preset.name, dataset=dataset, model=model_id, attack=attack, strategy=strategy,
                                  params_hash=param_hash(run_params(preset, attack, p, max_rmsd=max_rmsd, seed=seed,
                                                                    n=n_s, label=label)))
                    store = ResultStore(store_root, key, rank=rank)
                    stores.append(store)
                    done = store.done()
                    mine = [(k, c) for k, c in enumerate(chunks) if k % world == rank
                            and not {int(idx[i]) for i in c} <= done]
                    bar = _bar(mine, progress and rank == 0, f"{attack}/{strategy}")
                    for k, c in bar:
                        ii = idx[c]
                        x, _ = ds.tensors(ii)
                        recs = _run_chunk(ATTACKS[row_attack(attack)], model, x.to(dev), goal[c].to(dev), p,
                                          (seed, dataset, attack, strategy, k), max_rmsd, split=not scenario)
                        for i, r, a_row in zip(ii.tolist(), recs, goal.A[c]):
                            r.update(index=i, image_id=ds.ids[i], dataset=dataset, strategy=strategy, attack=attack,
                                     label=label, A=a_row.nonzero().flatten().tolist(), chunk=len(c),
                                     scores_clean=scores_all[i].tolist())
                        store.append(recs)
                    rows.append((store, dataset, strategy, attack, idx.tolist()))
        _barrier(world)
        if rank == 0:
            for store in stores:
                store.merge()
        _barrier(world)
        records = []
        for store, dataset, strategy, attack, idx in rows:
            store.reload()
            records.extend(store.records(idx))
    finally:
        if created:
            import torch.distributed as dist

            dist.destroy_process_group()
    frame = records_frame(records)
    return ExperimentResult(aggregate(frame, strategies, attacks), frame, sizes, eligible, label_names, store_root)


def _bar(items, enabled: bool, desc: str):
    if not enabled or not items:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, leave=False)


# ----------------------------------------------------------------------------- command line (mlnb.experiments_cli)
from .experiments_cli import _parse_params, main  # noqa: E402,F401  (python -m mlnb.experiments)

if __name__ == "__main__":
    sys.exit(main())
