"""What the attack notebooks 02-05 share: the attacked images and their random-case targets (Sec. IV-E),
two display helpers, and the tool of their from-scratch comparisons (one image on the CPU).

Introduced in notebooks/02_baselines_fgs_fg.ipynb.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import pandas as pd
import torch

from .data import load_dataset
from .labels import random_case
from .metrics import LOGIT_THRESHOLD, per_image_metrics
from .models import predict_logits
from .presets import get_preset
from .target import Target
from .training import get_target_model
from .validate import check_eval_model, check_images, check_label_matrix, check_positive, check_same_rows


@dataclass(frozen=True)
class AttackSet:
    """``n`` attacked images with their random-case targets (Sec. IV-E), all tensors on one device.

    ``x`` ``(n, C, H, W)`` in ``[0, 1]``; ``y``, ``A``, ``B`` ``(n, L)`` bool; ``logits_clean`` and
    ``scores_clean`` ``(n, L)`` (the model at ``x``); ``ids`` ``n`` image ids; ``names`` ``L`` label names;
    ``n_candidates`` images searched, ``n_in_X`` of them correctly classified and eligible.
    """

    model: torch.nn.Module
    model_info: dict
    x: torch.Tensor
    y: torch.Tensor
    A: torch.Tensor
    B: torch.Tensor
    logits_clean: torch.Tensor
    scores_clean: torch.Tensor
    ids: list
    names: tuple
    n_candidates: int
    n_in_X: int

    @property
    def target(self) -> Target:
        """The images' :class:`~mlnb.target.Target` (``y``, ``A``, ``B``): pass it to any attack."""
        return Target(self.y, self.A, self.B)

    def summary(self) -> str:
        """One line: how many candidates were in X and eligible, how many images are attacked."""
        return f"{self.n_in_X} of {self.n_candidates} test images are in X and eligible; attacking {len(self.ids)}"

    def _repr_html_(self) -> str:
        """A notebook shows an attack set as its :meth:`summary` above its :func:`targets_table`."""
        return f"<p>{self.summary()}</p>" + targets_table(self).to_html(index=False)

    def targets(self) -> list[str]:
        """Each image's target as text, ``"hide cat, show dog"`` (:func:`target_text`)."""
        return [target_text(self.names, yr, ar) for yr, ar in zip(self.y, self.A)]


def draw_attack_set(model, x_all: torch.Tensor, y_all: torch.Tensor, n_images: int, generator: torch.Generator,
                    *, ids=None, names=None, model_info: dict | None = None) -> AttackSet:
    """Keep the images of ``x_all`` ``(N, C, H, W)`` whose every label the model gets right (``H(x) = y``
    on logits: the set X of Sec. IV-E) and that have a random-case target (a positive and a negative
    label), and draw ``n_images`` of them with ``generator`` (returned in index order).

    ``generator`` draws the random-case targets of all ``N`` images (:func:`mlnb.labels.random_case`),
    then one permutation of the kept ones. ``ValueError`` when none qualifies. ``ids`` (``N``, default
    ``"0"``, ``"1"``, ...) and ``names`` (``L``, default ``"label 0"``, ...) are carried along.
    """
    check_eval_model(model)
    check_images(x_all, "x_all")
    check_label_matrix(y_all, "y_all")
    check_same_rows(x_all=x_all, y_all=y_all)
    check_positive("n_images", n_images, integer=True)
    ids = [str(i) for i in range(len(x_all))] if ids is None else list(ids)
    names = tuple(f"label {j}" for j in range(y_all.shape[1])) if names is None else tuple(names)
    if (len(ids), len(names)) != tuple(y_all.shape):
        raise ValueError(f"ids and names need one entry per image and per label {tuple(y_all.shape)}, "
                         f"got {len(ids)} and {len(names)}")
    logits_all = predict_logits(model, x_all)
    target_all = random_case(y_all, generator=generator)
    in_X = ((logits_all >= LOGIT_THRESHOLD) == y_all).all(1)  # Sec. IV-E: every label classified correctly
    candidates = (in_X & target_all.eligible).nonzero().flatten().cpu()
    if len(candidates) == 0:
        raise ValueError(f"no correctly classified image with a positive and a negative label among the "
                         f"{len(x_all)} candidates: search more images (raise N_CANDIDATES)")
    pick = candidates[torch.randperm(len(candidates), generator=generator)[:int(n_images)]].sort().values
    rows = pick.to(x_all.device)
    # sigmoid of the whole matrix, then rows: bit-equal to predict_scores' rows (a vectorised sigmoid
    # may round the last bit of a smaller tensor differently)
    return AttackSet(model=model, model_info=dict(model_info or {}), x=x_all[rows], y=y_all[rows],
                     A=target_all.A[rows], B=target_all.B[rows], logits_clean=logits_all[rows],
                     scores_clean=torch.sigmoid(logits_all)[rows], ids=[ids[i] for i in pick.tolist()],
                     names=names, n_candidates=len(x_all), n_in_X=len(candidates))


def load_attack_set(preset, n_images: int, n_candidates: int, generator: torch.Generator,
                    device: torch.device | str = "cpu") -> AttackSet:
    """The preset's target model (:func:`mlnb.training.get_target_model`, trained once and cached) and
    :func:`draw_attack_set` on its first ``min(n_candidates, preset.n_test)`` test images (the data
    cell of notebooks 02-05). ``preset`` is a :class:`mlnb.presets.Preset` or its name."""
    check_positive("n_images", n_images, integer=True)
    check_positive("n_candidates", n_candidates, integer=True)
    preset = get_preset(preset) if isinstance(preset, str) else preset
    model, info = get_target_model(preset, device=device, progress=False)
    ds = test_images(preset, n_candidates)
    x_all, y_all = ds.tensors()
    return draw_attack_set(model, x_all.to(device), y_all.to(device), n_images, generator, ids=ds.ids,
                           names=ds.label_names, model_info=info)


def test_images(preset, n_candidates: int):
    """The first ``min(n_candidates, preset.n_test)`` test images of the preset's first data set, a
    :class:`mlnb.data.MultiLabelDataset` (``.tensors()``, ``.label_names``, ``.ids``): the candidates
    the attack notebooks draw from (Sec. IV-E). ``preset`` is a :class:`mlnb.presets.Preset` or its name."""
    check_positive("n_candidates", n_candidates, integer=True)
    preset = get_preset(preset) if isinstance(preset, str) else preset
    n = int(n_candidates) if preset.n_test is None else min(int(n_candidates), preset.n_test)
    return load_dataset(preset.datasets[0], "test", n_examples=n, image_size=preset.image_size)


def target_text(names, y_row: torch.Tensor, A_row: torch.Tensor) -> str:
    """``"hide cat, show dog"``: the labels of ``A`` to hide (positive) and to show (negative) for one
    image; ``y_row``, ``A_row`` ``(L,)`` bool, ``names`` ``L`` label names."""
    hide = [n for n, a, p in zip(names, A_row.tolist(), y_row.tolist()) if a and p]
    show = [n for n, a, p in zip(names, A_row.tolist(), y_row.tolist()) if a and not p]
    return ", ".join([f"hide {n}" for n in hide] + [f"show {n}" for n in show])


def targets_table(data: AttackSet) -> pd.DataFrame:
    """One row per image: its id, its labels and its target (:func:`target_text`)."""
    return pd.DataFrame({"image": data.ids,
                         "labels": [", ".join(n for n, v in zip(data.names, r) if v) for r in data.y.tolist()],
                         "target (A)": data.targets()})


def per_image_table(res, data: AttackSet, name: str, param_name: str) -> pd.DataFrame:
    """One row per image of ``data`` for the :class:`mlnb.attacks.AttackResult` ``res``: target, success,
    constraints met, the attack's parameter (column ``param_name``), steps and the Sec. IV-D metrics,
    indexed by (image, ``name``)."""
    per = per_image_metrics(res.logits, data.x, res.x_adv, data.y, data.A, data.B)
    return pd.DataFrame({
        "image": data.ids, "attack": name,
        "target": data.targets(), "success": res.success.tolist(),
        "constraints": [f"{s}/{c}" for s, c in zip(res.n_satisfied.tolist(), res.extras["n_constraints"].tolist())],
        param_name: res.param.tolist(), "steps": res.iterations.tolist(),
        **{k: per[k].tolist() for k in ("rmsd", "hamming_A", "hamming_B", "kendall_tau_b")},
    }).set_index(["image", "attack"])


def on_cpu(data: AttackSet, i: int) -> tuple:
    """Image ``i`` of ``data`` alone on the CPU, ``(model, x (1, C, H, W), y, A, B (1, L))`` (the model copied
    if it lives elsewhere): CPU kernels are deterministic, so a loop doing the library's float32
    operations agrees with it to the bit, where an accelerator may sum in another order on each call."""
    if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(data.ids):
        raise ValueError(f"i must be an image index in 0..{len(data.ids) - 1}, got {i!r}")
    on = all(p.device.type == "cpu" for p in data.model.parameters())
    model = data.model if on else copy.deepcopy(data.model).cpu()
    return (model, *(t[i:i + 1].cpu() for t in (data.x, data.y, data.A, data.B)))
