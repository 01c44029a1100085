"""Training the target model with the paper's loss (Eq. 12), checkpoints and the cached default model.

Eq. 12 (Sec. IV-B) combines the instance-wise BPMLL ranking term, weighted by ``λ``, with the
label-wise AUC term over the images of a batch:

.. math::

    J = \\frac{λ}{n}\\sum_i \\frac{1}{|Y^+_{i·}||Y^-_{i·}|}\\sum_{(p,q) ∈ Y^+_{i·}×Y^-_{i·}} e^{f_q(x_i) - f_p(x_i)}
      + \\frac{1}{l}\\sum_j \\frac{1}{|Y^+_{·j}||Y^-_{·j}|}\\sum_{(p,q) ∈ Y^+_{·j}×Y^-_{·j}} e^{f_j(x_q) - f_j(x_p)}

**f is the sigmoid probability** (``scores="probability"``, the default): the paper's predictor
F is "a neural network with sigmoid output layer" thresholded at 0.5 (Sec. III-B, Eq. 3b).
Pushing every positive-negative gap of ``f ∈ [0, 1]`` towards 1 drives positives to 1 and negatives to 0, so
the 0.5 threshold of Eq. 3b is meaningful without a separate calibration, and the exponentials stay in ``[e^-1, e]``. On logits (``scores="logit"``) Eq. 12 is invariant to
adding a constant to every logit, so it fixes the ranking but not where 0.5 falls.

Introduced in notebooks/01_target_model.ipynb.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .probability import sigmoid as exact_sigmoid
from .models import AUX_WEIGHT, build_model, model_dtype, predict_scores
from .utils import cpu_threads, data_root, param_hash
from .validate import check_choice, check_label_matrix, check_positive

LOSSES = ("eq12", "bce")
SCORE_KINDS = ("probability", "logit")
CHECKPOINT_FORMAT = 1
TRAIN_THREADS = 2  # CPU threads for training a preset's target model (fixed: reproducible weights)
META_KEYS = ("backbone", "num_labels", "image_size", "label_names")


def _pair_term(f: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Per row of ``f`` ``(R, M)``: ``mean_{p pos, q neg} exp(f_q - f_p)``, ``(R,)``; 0 for rows
    without both a positive and a negative. The double sum factorises into
    ``(Σ_q e^{f_q}) (Σ_p e^{-f_p})``, computed as a stable log-sum-exp over masks."""
    neg = ~pos
    n_pos, n_neg = pos.sum(1), neg.sum(1)
    valid = (n_pos > 0) & (n_neg > 0)
    # rows that are not valid get a dummy all-True mask so log-sum-exp stays finite (and is zeroed)
    pos_m, neg_m = pos | ~valid[:, None], neg | ~valid[:, None]
    lse_neg = torch.logsumexp(f.masked_fill(~neg_m, float("-inf")), dim=1)
    lse_pos = torch.logsumexp((-f).masked_fill(~pos_m, float("-inf")), dim=1)
    log_count = torch.log(n_pos.clamp_min(1).to(f.dtype)) + torch.log(n_neg.clamp_min(1).to(f.dtype))
    return torch.where(valid, torch.exp(lse_neg + lse_pos - log_count), torch.zeros_like(lse_neg))


def eq12_loss(logits: torch.Tensor, y: torch.Tensor, lam: float = 0.5, scores: str = "probability") -> torch.Tensor:
    """The paper's training loss, Eq. 12 (Sec. IV-B): a scalar.

    ``logits`` ``(n, l)``, ``y`` ``(n, l)`` bool. ``f = sigmoid(logits)`` (default) or the logits
    themselves (``scores="logit"``). Instance term: mean over the ``n`` rows (a row without both a
    positive and a negative label adds 0), weighted ``lam``; label term: mean over the ``l``
    columns of the batch (a column without both a positive and a negative image adds 0).

    Introduced in notebooks/01_target_model.ipynb.
    """
    check_label_matrix(y, "y", num_labels=logits.shape[-1])
    check_choice("scores", scores, SCORE_KINDS)
    check_positive("lam", lam, allow_zero=True)
    if logits.shape != y.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and y {tuple(y.shape)} must have the same shape")
    # the exact-gradient sigmoid: a label at logit 20 (probability 1.0 in float32) keeps its true,
    # tiny gradient instead of torch.sigmoid's rounded 0 (mlnb.probability)
    f = exact_sigmoid(logits) if scores == "probability" else logits
    return lam * _pair_term(f, y).mean() + _pair_term(f.t(), y.t()).mean()


def _loss(out, y: torch.Tensor, loss: str, lam: float, scores: str = "probability") -> torch.Tensor:
    if isinstance(out, tuple):  # Inception-v3 in train mode: (logits, aux_logits)
        return _loss(out[0], y, loss, lam, scores) + AUX_WEIGHT * _loss(out[1], y, loss, lam, scores)
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(out, y.to(out.dtype))
    return eq12_loss(out, y, lam, scores)


def train_model(model: torch.nn.Module, train_set, *, epochs: int, batch_size: int, lr: float,
                loss: str = "eq12", lam: float = 0.5, scores: str = "probability", max_seconds: float | None = None,
                weight_decay: float = 1e-4, augment: bool = True, generator: torch.Generator | None = None,
                progress: bool = True, device=None, clock=time.perf_counter, inputs=None,
                desc: str = "training") -> dict:
    """Train ``model`` on ``train_set`` (a :class:`mlnb.data.MultiLabelDataset`) with Adam and a cosine
    learning-rate schedule on shuffled batches of ``batch_size`` images (a last batch of one image joins the
    batch before it: BatchNorm cannot train on one value per channel); random horizontal flips when ``augment``.
    ``loss="eq12"`` (Eq. 12 with weight ``lam``, ``f`` = ``scores``: ``"probability"`` or ``"logit"``) or
    ``"bce"``. Stops early, after the step in which more than ``max_seconds`` have passed. Ends in eval mode.

    ``clock`` (keyword-only, default :func:`time.perf_counter`): a callable returning seconds as a float,
    used for ``max_seconds`` and ``train_seconds``. It is read once before the first step, after every
    step while ``max_seconds`` is set, and once at the end; tests pass a fake clock to make the early
    stop deterministic.

    ``inputs`` (keyword-only): a function ``(model, x, y) -> x'`` of each (augmented) batch that gives the
    images the step trains on (default: the batch itself; :func:`mlnb.robust_training.adversarial_train`
    passes adversarial examples of the current model). ``desc`` names the progress bar.

    Returns a history dict: ``loss`` (mean per epoch), ``epochs_run``, ``steps``, ``train_seconds``
    (elapsed on ``clock``: wall clock by default), ``train_cpu_seconds`` (process CPU time, all threads),
    ``threads``, ``stopped_early``.

    Introduced in notebooks/01_target_model.ipynb.
    """
    check_choice("loss", loss, LOSSES)
    check_choice("scores", scores, SCORE_KINDS)
    for name, v in (("epochs", epochs), ("batch_size", batch_size)):
        check_positive(name, v, integer=True)
    epochs, batch_size = int(epochs), int(batch_size)
    check_positive("lr", lr)
    check_positive("lam", lam, allow_zero=True)
    if max_seconds is not None:
        check_positive("max_seconds", max_seconds)
    if not callable(clock):
        raise TypeError(f"clock must be a callable returning seconds (e.g. time.monotonic), got {clock!r}")
    if len(train_set) == 0:
        raise ValueError("train_set is empty: pass at least one training image")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    dtype = model_dtype(model.to(device))  # the data sets' float32 images are cast for a float64 (or half) model
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    steps_per_epoch = max(1, math.ceil(len(train_set) / batch_size) - (len(train_set) % batch_size == 1))
    total = epochs * steps_per_epoch
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=0.15)
    history = {"loss": [], "epochs_run": 0, "steps": 0, "stopped_early": False}
    start, cpu_start = clock(), time.process_time()
    bar = tqdm(total=total, disable=not progress, desc=desc)
    model.train()
    for _ in range(epochs):
        order, running = torch.randperm(len(train_set), generator=gen), []
        for k in range(steps_per_epoch):
            x, y = train_set.tensors(order[k * batch_size:(k + 1) * batch_size if k + 1 < steps_per_epoch else None])
            if augment:
                flip = torch.rand(x.shape[0], generator=gen) < 0.5
                x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            x, y = x.to(device, dtype), y.to(device)
            value = _loss(model(x if inputs is None else inputs(model, x, y)), y, loss, lam, scores)
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            sched.step()
            running.append(float(value.detach()))
            history["steps"] += 1
            bar.update(1)
            if max_seconds is not None and clock() - start > max_seconds:
                history["stopped_early"] = True
                break
        history["loss"].append(sum(running) / len(running))
        history["epochs_run"] += 1
        bar.set_postfix(loss=f"{history['loss'][-1]:.4f}")
        if history["stopped_early"]:
            break
    bar.close()
    history["train_seconds"] = clock() - start
    history["train_cpu_seconds"] = time.process_time() - cpu_start  # all threads; / threads ~ idle-machine wall
    history["threads"] = torch.get_num_threads()
    model.eval()
    return history


def save_model(model: torch.nn.Module, path: str | Path, meta: dict) -> Path:
    """Write ``{"format", "state_dict", "meta"}`` atomically; ``meta`` needs ``backbone``,
    ``num_labels``, ``image_size`` and ``label_names`` (plain JSON-like values only).

    Introduced in notebooks/01_target_model.ipynb.
    """
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise ValueError(f"meta lacks {missing}: pass backbone, num_labels, image_size and label_names")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": CHECKPOINT_FORMAT, "meta": dict(meta),
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def load_model(path: str | Path, device=None, expect: dict | None = None) -> tuple[torch.nn.Module, dict]:
    """Load a checkpoint written by :func:`save_model` (``torch.load(weights_only=True)``).

    Returns ``(model in eval mode, meta)``. Raises ``FileNotFoundError`` for a missing file and
    ``ValueError`` for a corrupted file, a state dict that does not fit its meta, or meta values
    that differ from ``expect`` (e.g. ``{"num_labels": 10}``).

    Introduced in notebooks/01_target_model.ipynb.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: train one with train_model + save_model")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise ValueError(f"checkpoint {path} is corrupted or not an mlnb checkpoint ({type(err).__name__}: "
                         f"{first}): delete it and retrain") from err
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT or "state_dict" not in payload:
        raise ValueError(f"{path} is not an mlnb checkpoint (format {CHECKPOINT_FORMAT}): delete it and retrain")
    meta = payload.get("meta", {})
    missing = [k for k in META_KEYS if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise ValueError(f"checkpoint {path} lacks the meta entries {missing} (a corrupted or foreign file): "
                         f"delete it and retrain")
    for key, want in (expect or {}).items():
        if meta.get(key) != want:
            raise ValueError(f"checkpoint {path} has {key}={meta.get(key)!r} but {want!r} was expected: "
                             f"retrain (retrain=True) or pass the matching setting")
    try:
        model = build_model(meta["backbone"], meta["num_labels"], pretrained=False, image_size=meta["image_size"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"checkpoint {path} describes an architecture this version cannot build ({err}): "
                         f"delete it and retrain") from err
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as err:  # torch's first line only names the class: show the first mismatch
        detail = ([line.strip() for line in str(err).splitlines() if line.strip()] + [""])[1][:300]
        raise ValueError(f"checkpoint {path} does not fit a {meta['backbone']} with {meta['num_labels']} labels "
                         f"({detail}): delete it and retrain") from err
    if device is not None:
        model.to(device)
    return model.eval(), meta


def weights_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 (first 16 hex digits) of a model's parameters and buffers, in ``state_dict`` order: two
    trainings that gave bit-identical weights have the same fingerprint.

    Introduced in notebooks/01_target_model.ipynb.
    """
    import hashlib

    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())  # any dtype (bf16)
    return h.hexdigest()[:16]


def get_target_model(preset, device=None, retrain: bool = False, progress: bool = True, dataset: str | None = None):
    """The target model of a preset (name or :class:`mlnb.presets.Preset`), trained once and cached
    under ``data_root()/models/<preset>-<hash>.pt`` (the hash covers data, model and training settings).
    ``dataset`` picks one of ``preset.datasets`` (default: the first; the paper preset trains one
    Inception-v3 on VOC 2007 and another on VOC 2012, as Table III does).

    Returns ``(model in eval mode, info)``: ``path``, ``cached``, ``train_seconds``, ``history``, ``test_metrics``.

    Introduced in notebooks/01_target_model.ipynb.
    """
    from .data import load_dataset
    from .presets import check_data_available, get_preset

    preset = get_preset(preset) if isinstance(preset, str) else preset
    dataset = preset.datasets[0] if dataset is None else dataset
    check_choice("dataset of this preset", dataset, preset.datasets)
    key = {"dataset": dataset, "image_size": preset.image_size, "backbone": preset.backbone,
           "pretrained": preset.pretrained, "n_train": preset.n_train, "n_test": preset.n_test,
           "train": preset.train, "seed": 0, "format": CHECKPOINT_FORMAT,
           "eq12_gradient": "exact", "cpu_threads": TRAIN_THREADS}  # older models are not reused
    path = data_root() / "models" / f"{preset.name}-{param_hash(key)}.pt"
    if path.is_file() and not retrain:
        model, meta = load_model(path, device=device, expect={"backbone": preset.backbone,
                                                              "image_size": preset.image_size})
        return model, {**meta, "path": str(path), "cached": True}
    check_data_available(preset)  # before any work: names the missing VOC folder and the download flag
    train_split = "trainval" if dataset == "voc2007" else "train"
    train_set = load_dataset(dataset, train_split, preset.n_train, image_size=preset.image_size)
    test_set = load_dataset(dataset, "test", preset.n_test, image_size=preset.image_size)
    torch.manual_seed(0)  # head / backbone initialisation
    model = build_model(preset.backbone, train_set.num_labels, pretrained=preset.pretrained,
                        image_size=preset.image_size).to(device if device is not None else "cpu")
    return fit_and_save(model, lambda: train_model(model, train_set, generator=torch.Generator().manual_seed(0),
                                                   progress=progress, **preset.train),
                        path, preset, dataset, train_set, test_set)


def fit_and_save(model: torch.nn.Module, fit, path: Path, preset, dataset: str, train_set, test_set, **extra_meta):
    """Run ``fit()`` (returns a history) on :data:`TRAIN_THREADS` CPU threads (reproducible weights), score
    ``test_set`` (Table III) and save the model at ``path`` with its metadata (``extra_meta`` added); returns
    ``(model, info)`` as :func:`get_target_model`. The robust and surrogate models train through it too."""
    from .metrics import model_quality

    device = next(model.parameters()).device
    on_cpu = device.type == "cpu"
    with cpu_threads(TRAIN_THREADS, device):
        history = fit()
    scores = predict_scores(model, test_set, batch_size=200).cpu()
    meta = {"backbone": preset.backbone, "num_labels": train_set.num_labels, "image_size": preset.image_size,
            "label_names": list(train_set.label_names), "preset": preset.name, "dataset": dataset,
            "train_seconds": history["train_seconds"], "history": history, "n_train": len(train_set),
            "n_test": len(test_set), "test_metrics": model_quality(scores, test_set.labels), **extra_meta,
            "weights_sha256": weights_fingerprint(model), "train_threads": TRAIN_THREADS if on_cpu else None}
    save_model(model, path, meta)
    return model, {**meta, "path": str(path), "cached": False}
