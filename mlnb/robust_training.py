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

import time

import torch

from .training import (CHECKPOINT_FORMAT, TRAIN_THREADS, _loss, fit_and_save, load_model, train_model,
                       weights_fingerprint)
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
        value = _loss(model(x + delta), y, loss, lam)
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
    gen = generator if generator is not None else torch.Generator().manual_seed(0)

    def adversarial(net, x, y):  # the batch's adversarial examples of the current model, in train mode
        return _perturb(net, x, y, norm, float(eps), steps, float(step_size), True, loss, lam, gen)

    history = train_model(model, train_set, epochs=epochs, batch_size=batch_size, lr=lr, loss=loss, lam=lam,
                          weight_decay=weight_decay, augment=augment, generator=gen, progress=progress,
                          device=device, clock=clock, inputs=adversarial, desc=f"adversarial training ({norm})")
    history.pop("stopped_early")
    return {**history, "norm": norm, "eps": float(eps), "attack_steps": steps, "step_size": float(step_size)}


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
    from .presets import get_preset
    from .training import get_target_model

    preset = get_preset(preset) if isinstance(preset, str) else preset
    eps, step = _threat_model(norm, loss, eps, steps, step_size)
    eps = float(eps)
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
    def fit():
        return adversarial_train(model, train_set, norm=norm, eps=eps, steps=steps, step_size=step_size, loss=loss,
                                 lam=preset.train.get("lam", 0.5), generator=torch.Generator().manual_seed(0),
                                 progress=progress, **recipe)

    return fit_and_save(model, fit, path, preset, dataset, train_set, test_set, base_weights_sha256=key["base"],
                        threat_model={"norm": norm, "eps": eps, "steps": steps, "step_size": step})
