"""Multi-label adversarial training: the target model trained on adversarial examples of its own loss.

The paper ends (Sec. V) with "effective defensive methods", naming adversarial training with
multi-label adversarial examples. Here the inner maximisation is taken over the model's *training*
loss, Eq. 12 (:func:`mlnb.training.eq12_loss`, or BCE), not over one attack's target: every label
of every image is pushed towards error at once, so the model learns to hold its whole label set in
a norm ball (Madry et al., ICLR 2018: ``min_θ E max_{||δ|| ≤ ε} J(θ, x + δ, y)``).

* L∞ ball: "fast" adversarial training (Wong, Rice and Kolter, ICLR 2020): a uniform random start
  in the ball, one signed-gradient step of ``α = 1.25 ε``, projection; ``steps > 1`` with
  ``α = 2.5 ε / steps`` is PGD (Madry et al.).
* L2 ball: the same with a random start drawn uniformly in the ball and normalised-gradient steps.

The model is fine-tuned from the preset's standard target model (:func:`mlnb.training.get_target_model`),
which reaches a robust model in a few epochs on 2 CPU cores; :func:`get_robust_model` caches it under
``data_root()/models`` keyed by everything that changes its weights.

Introduced in notebooks/12_robust_training.ipynb.
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .models import AUX_WEIGHT
from .training import CHECKPOINT_FORMAT, TRAIN_THREADS, eq12_loss, load_model, save_model, weights_fingerprint
from .utils import data_root, param_hash
from .validate import check_choice, check_images, check_int, check_label_matrix, check_positive

NORMS = ("linf", "l2")
LOSSES = ("eq12", "bce")
# per preset: the adversarial fine-tuning recipe (epochs of Adam with a one-cycle schedule from the standard model).
# default: 4 epochs x 160 steps, each two forward-backward passes (attack + update): 470 CPU-s on 2 threads, measured
# on a shared machine, against 573 CPU-s recorded for the standard model's 12 epochs (80 s on 2 idle cores)
RECIPES = {
    "smoke": {"epochs": 1, "batch_size": 100, "lr": 3e-3},
    "default": {"epochs": 4, "batch_size": 100, "lr": 3e-3},
    "paper": {"epochs": 5, "batch_size": 64, "lr": 1e-4},
}
DEFAULT_EPS = {"linf": 4 / 255, "l2": 0.5}  # budgets on [0, 1] images (L2: RMSD 1.8 at 40 px on the 0-255 scale)


def _training_loss(logits, y: torch.Tensor, loss: str, lam: float) -> torch.Tensor:
    if isinstance(logits, tuple):  # Inception-v3 in train mode: (logits, aux_logits), as mlnb.training
        return _training_loss(logits[0], y, loss, lam) + AUX_WEIGHT * _training_loss(logits[1], y, loss, lam)
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(logits, y.to(logits.dtype))
    return eq12_loss(logits, y, lam)


def _unit(g: torch.Tensor, norm: str) -> torch.Tensor:
    """The steepest-ascent direction of a unit step: ``sign(g)`` (L∞) or ``g / ||g||_2`` per image (L2)."""
    if norm == "linf":
        return g.sign()
    return g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (g.dim() - 1)))


def _project(delta: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    if norm == "linf":
        return delta.clamp(-eps, eps)
    n = delta.flatten(1).norm(dim=1).view(-1, *([1] * (delta.dim() - 1)))
    return delta * (eps / n.clamp_min(1e-12)).clamp(max=1.0)


def _random_start(x: torch.Tensor, norm: str, eps: float, generator: torch.Generator | None) -> torch.Tensor:
    """A uniform draw from the ``eps`` ball around 0, shaped like ``x`` (drawn on the generator's device)."""
    dev = generator.device if generator is not None else x.device
    if norm == "linf":
        u = torch.rand(x.shape, generator=generator, device=dev)
        return ((2 * u - 1) * eps).to(x.device, x.dtype)
    g = torch.randn(x.shape, generator=generator, device=dev)
    r = torch.rand(x.shape[0], generator=generator, device=dev) ** (1.0 / x[0].numel())
    d = _unit(g, "l2") * (eps * r).view(-1, *([1] * (x.dim() - 1)))
    return d.to(x.device, x.dtype)


@torch.enable_grad()
def _perturb(model, x, y, norm, eps, steps, step_size, random_start, loss, lam, generator):
    delta = _random_start(x, norm, eps, generator) if random_start else torch.zeros_like(x)
    delta = ((x + delta).clamp(0, 1) - x)
    for _ in range(steps):
        delta.requires_grad_(True)
        value = _training_loss(model(x + delta), y, loss, lam)
        (grad,) = torch.autograd.grad(value, delta)
        delta = _project(delta.detach() + step_size * _unit(grad, norm), norm, eps)
        delta = (x + delta).clamp(0, 1) - x
    return (x + delta).detach()


def _threat_model(norm: str, loss: str, eps, steps, step_size) -> tuple[float, float]:
    """Validate the threat model and fill its defaults: ``eps`` (:data:`DEFAULT_EPS` of ``norm``) and the
    step size (1.25 eps for one step, as fast adversarial training; 2.5 eps / steps for PGD, as Madry et al.)."""
    check_choice("norm", norm, NORMS)
    check_choice("loss", loss, LOSSES)
    eps = DEFAULT_EPS[norm] if eps is None else eps
    check_positive("eps", eps)
    check_int("steps", steps)
    step_size = (1.25 * eps if steps == 1 else 2.5 * eps / steps) if step_size is None else step_size
    check_positive("step_size", step_size)
    return eps, step_size


def adversarial_examples(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: str = "linf",
                         eps: float | None = None, steps: int = 1, step_size: float | None = None,
                         random_start: bool = True, loss: str = "eq12", lam: float = 0.5,
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """Adversarial examples of the multi-label training loss: ``x + δ`` with ``δ`` (approximately)
    maximising ``J(θ, x + δ, y)`` (Eq. 12 with weight ``lam``, or BCE) over the ``eps`` ball.

    ``x`` ``(N, C, H, W)`` in ``[0, 1]``, ``y`` ``(N, L)`` bool; returns ``(N, C, H, W)`` in ``[0, 1]``
    with ``||x_adv - x|| <= eps`` in ``norm`` (``"linf"`` or ``"l2"``, on the ``[0, 1]`` scale).
    ``steps`` signed (L∞) or normalised (L2) gradient steps of ``step_size`` (default ``1.25 eps``
    for one step, Wong et al. ICLR 2020; ``2.5 eps / steps`` for PGD, Madry et al. ICLR 2018) from a
    uniform random start in the ball (``random_start``, drawn with ``generator``). Eq. 12's label term
    couples the images of a batch, so the batch is perturbed as one. The model is used in whatever
    mode it is in (:func:`adversarial_train` calls it in train mode, as in training).

    Introduced in notebooks/12_robust_training.ipynb.
    """
    check_images(x)
    check_label_matrix(y, "y")
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"x has {x.shape[0]} images but y has {y.shape[0]} rows: pass one label row per image")
    eps, step_size = _threat_model(norm, loss, eps, steps, step_size)
    check_positive("lam", lam, allow_zero=True)
    return _perturb(model, x, y, norm, float(eps), steps, float(step_size), bool(random_start), loss, lam, generator)


def adversarial_train(model: torch.nn.Module, train_set, *, epochs: int, batch_size: int, lr: float,
                      norm: str = "linf", eps: float | None = None, steps: int = 1, step_size: float | None = None,
                      loss: str = "eq12", lam: float = 0.5, weight_decay: float = 1e-4, augment: bool = True,
                      generator: torch.Generator | None = None, progress: bool = True, device=None,
                      clock=time.perf_counter) -> dict:
    """Adversarial training (Madry et al., ICLR 2018) of ``model`` on ``train_set`` (a
    :class:`mlnb.data.MultiLabelDataset`): every step replaces the batch by
    :func:`adversarial_examples` of the current model (``norm``, ``eps``, ``steps``, ``step_size``,
    random start from ``generator``) and takes an Adam step on the training loss (Eq. 12 or BCE) at
    those inputs. One-cycle learning rate as :func:`mlnb.training.train_model`; random horizontal
    flips when ``augment``. Leaves the model in eval mode.

    Returns a history dict: ``loss`` (mean adversarial loss per epoch), ``epochs_run``, ``steps``,
    ``train_seconds`` (on ``clock``), ``train_cpu_seconds``, ``threads``, and the settings
    ``norm``, ``eps``, ``attack_steps``, ``step_size``.

    Introduced in notebooks/12_robust_training.ipynb.
    """
    eps, step_size = _threat_model(norm, loss, eps, steps, step_size)
    check_int("epochs", epochs)
    check_int("batch_size", batch_size)
    check_positive("lr", lr)
    if len(train_set) == 0:
        raise ValueError("train_set is empty: pass at least one training image")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    steps_per_epoch = math.ceil(len(train_set) / batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.15)
    history = {"loss": [], "epochs_run": 0, "steps": 0, "norm": norm, "eps": float(eps), "attack_steps": steps,
               "step_size": float(step_size)}
    start, cpu_start = clock(), time.process_time()
    bar = tqdm(total=epochs * steps_per_epoch, disable=not progress, desc=f"adversarial training ({norm})")
    model.train()
    for _ in range(epochs):
        order, running = torch.randperm(len(train_set), generator=gen), []
        for k in range(steps_per_epoch):
            x, y = train_set.tensors(order[k * batch_size:(k + 1) * batch_size])
            if augment:
                flip = torch.rand(x.shape[0], generator=gen) < 0.5
                x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            x, y = x.to(device), y.to(device)
            x_adv = _perturb(model, x, y, norm, float(eps), steps, float(step_size), True, loss, lam, gen)
            value = _training_loss(model(x_adv), y, loss, lam)
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            sched.step()
            running.append(float(value.detach()))
            history["steps"] += 1
            bar.update(1)
        history["loss"].append(sum(running) / len(running))
        history["epochs_run"] += 1
        bar.set_postfix(loss=f"{history['loss'][-1]:.4f}")
    bar.close()
    history["train_seconds"] = clock() - start
    history["train_cpu_seconds"] = time.process_time() - cpu_start
    history["threads"] = torch.get_num_threads()
    model.eval()
    return history


def get_robust_model(preset, *, norm: str = "l2", eps: float | None = None, steps: int = 1,
                     step_size: float | None = None, loss: str = "eq12", device=None, retrain: bool = False,
                     progress: bool = True):
    """The preset's target model fine-tuned by :func:`adversarial_train` (recipe ``RECIPES[preset.name]``),
    trained once and cached under ``data_root()/models/<preset>-adv-<norm>-<hash>.pt``; the hash covers
    the standard model's weights (:func:`mlnb.training.weights_fingerprint`), the recipe and the threat
    model (``norm``, ``eps``, ``steps``, ``step_size``, ``loss``).

    Returns ``(model in eval mode, info)``; ``info`` holds ``path``, ``cached``, ``train_seconds``,
    ``history``, ``base_weights_sha256`` and ``test_metrics`` (Table III, :func:`mlnb.metrics.model_quality`,
    on ``preset.n_test`` held-out images).

    Introduced in notebooks/12_robust_training.ipynb.
    """
    from .data import load_dataset
    from .metrics import model_quality
    from .models import predict_scores
    from .presets import get_preset
    from .training import get_target_model

    preset = get_preset(preset) if isinstance(preset, str) else preset
    check_choice("norm", norm, NORMS)
    check_choice("loss", loss, LOSSES)
    eps = float(DEFAULT_EPS[norm] if eps is None else eps)
    check_positive("eps", eps)
    check_int("steps", steps)
    base, base_info = get_target_model(preset, device=device, progress=progress)
    recipe = RECIPES.get(preset.name, RECIPES["default"])
    key = {"base": weights_fingerprint(base), "recipe": recipe, "norm": norm, "eps": eps, "steps": steps,
           "step_size": step_size, "loss": loss, "lam": preset.train.get("lam", 0.5), "seed": 0,
           "format": CHECKPOINT_FORMAT, "cpu_threads": TRAIN_THREADS}
    path = data_root() / "models" / f"{preset.name}-adv-{norm}-{param_hash(key)}.pt"
    if path.is_file() and not retrain:
        model, meta = load_model(path, device=device, expect={"backbone": preset.backbone,
                                                              "image_size": preset.image_size})
        return model, {**meta, "path": str(path), "cached": True}
    dataset = preset.datasets[0]
    train_split = "trainval" if dataset == "voc2007" else "train"
    train_set = load_dataset(dataset, train_split, preset.n_train, image_size=preset.image_size)
    test_set = load_dataset(dataset, "test", preset.n_test, image_size=preset.image_size)
    model = base  # fine-tuned in place: get_target_model loads a fresh copy from its cache on every call
    threads = torch.get_num_threads()
    on_cpu = next(model.parameters()).device.type == "cpu"
    if on_cpu:
        torch.set_num_threads(TRAIN_THREADS)
    try:
        history = adversarial_train(model, train_set, norm=norm, eps=eps, steps=steps, step_size=step_size,
                                    loss=loss, lam=preset.train.get("lam", 0.5),
                                    generator=torch.Generator().manual_seed(0), progress=progress, **recipe)
    finally:
        torch.set_num_threads(threads)
    scores = predict_scores(model, test_set, batch_size=200).cpu()
    meta = {"backbone": preset.backbone, "num_labels": train_set.num_labels, "image_size": preset.image_size,
            "label_names": list(train_set.label_names), "preset": preset.name, "dataset": dataset,
            "train_seconds": history["train_seconds"], "history": history, "n_train": len(train_set),
            "n_test": len(test_set), "test_metrics": model_quality(scores, test_set.labels),
            "base_weights_sha256": key["base"],
            "weights_sha256": weights_fingerprint(model), "train_threads": TRAIN_THREADS if on_cpu else None,
            "threat_model": {"norm": norm, "eps": eps, "steps": steps, "step_size": history["step_size"]}}
    save_model(model, path, meta)
    return model, {**meta, "path": str(path), "cached": False}
