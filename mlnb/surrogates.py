"""Surrogate models for black-box transfer (the paper's future work, Sec. V: attacks used "in black-box
settings by leveraging the transferability among models"): models the attacker trains himself, on the same
data, that differ from the target in one thing each.

* ``"seed"``: the target's backbone, loss and recipe with another initialisation and data order (seed 1)
  and a shorter schedule (``SURROGATE_BUDGETS``);
* ``"loss"``: the ``"seed"`` surrogate with the other training loss (binary cross-entropy instead of the
  paper's Eq. 12, or Eq. 12 when the target used BCE): it differs from ``"seed"`` in the loss only;
* ``"arch"``: another backbone of :data:`mlnb.models.BACKBONES` (``ALTERNATIVE_BACKBONE``: an ImageNet
  MobileNetV2, installed offline, for the small CNN), fine-tuned with the target's loss and seed 1.

Each is trained once and cached like the target model (:func:`mlnb.training.get_target_model`) under
``data_root()/models/<preset>-surrogate-<name>-<hash>.pt``, the hash covering the data and the recipe, with
a fixed CPU thread count so the same recipe gives the same weights.

Introduced in notebooks/11_transfer.ipynb.
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import torch

from .models import build_model
from .training import CHECKPOINT_FORMAT, TRAIN_THREADS, fit_and_save, load_model, train_model
from .utils import data_root, param_hash
from .validate import check_choice

SURROGATE_NAMES = ("seed", "loss", "arch")
ALTERNATIVE_BACKBONE = {"small_cnn": "mobilenet_v2", "mobilenet_v2": "small_cnn", "resnet18": "mobilenet_v2",
                        "inception_v3": "resnet18"}
# one-time training budgets: epochs and training images (None: the preset's) of the surrogates of the target's
# backbone ("seed", "loss") and of "arch". On the default preset the small CNNs take half the target's 1920 steps and
# MobileNetV2 80 steps: about 90 s for all three on 2 idle cores by per-step timing (33 ms a small-CNN step,
# 250 ms a MobileNetV2 step); 522 s measured on 2 cores shared with other jobs (load about 3).
SURROGATE_BUDGETS = {
    "smoke": {"epochs": 2, "arch_epochs": 1, "n_train": 3000, "arch_n_train": 3000},
    "default": {"epochs": 6, "arch_epochs": 1, "n_train": None, "arch_n_train": 8000},
}
PRETRAINED_LR = 1e-3  # Adam's peak step when fine-tuning ImageNet weights (the presets' 1e-2 erases them)
N_EVAL = 1000  # held-out images each surrogate's Table III metrics are measured on


@dataclass(frozen=True)
class SurrogateSpec:
    """How one surrogate is trained: ``backbone`` (:data:`mlnb.models.BACKBONES`), ``pretrained``
    (ImageNet weights), ``loss`` (``"eq12"`` or ``"bce"``), ``seed`` (initialisation and data order),
    ``epochs``, ``n_train`` (training images, None: the whole split), ``lr``, ``batch_size``, ``lam``
    (Eq. 12's weight)."""

    name: str
    backbone: str
    pretrained: bool
    loss: str
    seed: int
    epochs: int
    n_train: int | None
    lr: float
    batch_size: int
    lam: float = 0.5


def surrogate_specs(preset) -> dict[str, SurrogateSpec]:
    """The three surrogates of a preset (name or :class:`mlnb.presets.Preset`), ``{name: SurrogateSpec}``
    for :data:`SURROGATE_NAMES`. Budgets come from :data:`SURROGATE_BUDGETS` (a preset not listed there
    uses its own epochs and training set).

    Introduced in notebooks/11_transfer.ipynb.
    """
    from .presets import get_preset

    preset = get_preset(preset) if isinstance(preset, str) else preset
    tr = preset.train
    ignored = sorted(set(tr) - {"epochs", "batch_size", "lr", "loss", "lam"})
    if ignored:
        warnings.warn(f"preset {preset.name!r} sets train {ignored}, which the surrogates do not carry: they train "
                      "with train_model's defaults for these, so they differ from the target model in more than "
                      "their one documented way", stacklevel=2)
    budget = SURROGATE_BUDGETS.get(preset.name, {"epochs": tr["epochs"], "arch_epochs": tr["epochs"],
                                                 "n_train": preset.n_train, "arch_n_train": preset.n_train})

    def images(n):  # the budget's training images, at most the preset's
        return n if preset.n_train is None or n is None else min(n, preset.n_train)

    loss = tr.get("loss", "eq12")
    common = dict(seed=1, batch_size=tr["batch_size"], lam=tr.get("lam", 0.5))
    alt = ALTERNATIVE_BACKBONE[preset.backbone]
    alt_pretrained = alt != "small_cnn"
    return {
        "seed": SurrogateSpec("seed", preset.backbone, preset.pretrained, loss, epochs=budget["epochs"],
                              n_train=images(budget["n_train"]), lr=tr["lr"], **common),
        "loss": SurrogateSpec("loss", preset.backbone, preset.pretrained, "bce" if loss == "eq12" else "eq12",
                              epochs=budget["epochs"], n_train=images(budget["n_train"]), lr=tr["lr"], **common),
        "arch": SurrogateSpec("arch", alt, alt_pretrained, loss, epochs=budget["arch_epochs"],
                              n_train=images(budget["arch_n_train"]), lr=PRETRAINED_LR if alt_pretrained else tr["lr"],
                              **common),
    }


def get_surrogate(preset, name: str, device=None, retrain: bool = False, progress: bool = True):
    """The surrogate ``name`` (one of :data:`SURROGATE_NAMES`) of a preset, trained once with
    :func:`mlnb.training.train_model` on the preset's training split and cached under
    ``data_root()/models/<preset>-surrogate-<name>-<hash>.pt`` (the hash covers the data and the
    :class:`SurrogateSpec`).

    Returns ``(model in eval mode, info)``; ``info`` holds ``spec``, ``path``, ``cached``,
    ``train_seconds`` (wall clock of the training, recorded when it ran), ``history`` and ``test_metrics``
    (Table III on the first ``N_EVAL`` test images).

    Introduced in notebooks/11_transfer.ipynb.
    """
    from .data import load_dataset
    from .presets import check_data_available, get_preset

    preset = get_preset(preset) if isinstance(preset, str) else preset
    check_choice("surrogate", name, SURROGATE_NAMES)
    spec = surrogate_specs(preset)[name]
    dataset = preset.datasets[0]
    key = {"dataset": dataset, "image_size": preset.image_size, "spec": asdict(spec), "format": CHECKPOINT_FORMAT,
           "eq12_gradient": "exact", "cpu_threads": TRAIN_THREADS}
    path = data_root() / "models" / f"{preset.name}-surrogate-{name}-{param_hash(key)}.pt"
    if path.is_file() and not retrain:
        model, meta = load_model(path, device=device, expect={"backbone": spec.backbone,
                                                              "image_size": preset.image_size})
        return model, {**meta, "path": str(path), "cached": True}
    check_data_available(preset)
    train_split = "trainval" if dataset == "voc2007" else "train"
    train_set = load_dataset(dataset, train_split, spec.n_train, image_size=preset.image_size)
    n_eval = N_EVAL if preset.n_test is None else min(N_EVAL, preset.n_test)
    test_set = load_dataset(dataset, "test", n_eval, image_size=preset.image_size)
    torch.manual_seed(spec.seed)  # head / backbone initialisation
    model = build_model(spec.backbone, train_set.num_labels, pretrained=spec.pretrained, image_size=preset.image_size)
    if device is not None:
        model.to(device)
    return fit_and_save(model, lambda: train_model(model, train_set, epochs=spec.epochs, batch_size=spec.batch_size,
                                                   lr=spec.lr, loss=spec.loss, lam=spec.lam, progress=progress,
                                                   generator=torch.Generator().manual_seed(spec.seed)),
                        path, preset, dataset, train_set, test_set, backbone=spec.backbone, surrogate=name,
                        spec=asdict(spec))


def get_surrogates(preset, names=SURROGATE_NAMES, device=None, retrain: bool = False,
                   progress: bool = True) -> dict[str, tuple]:
    """:func:`get_surrogate` for each of ``names``: ``{name: (model, info)}``.

    Introduced in notebooks/11_transfer.ipynb.
    """
    names = list(names)
    for n in names:
        check_choice("surrogate", n, SURROGATE_NAMES)
    return {n: get_surrogate(preset, n, device=device, retrain=retrain, progress=progress) for n in names}
