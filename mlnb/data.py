"""One entry point for every data set: ``load_dataset(name, split, n_examples=None, ...)``.

* ``"animals"``: the embedded offline composites of :mod:`mlnb.animals` (10 labels; splits
  ``train``, ``val``, ``test``; default 40 px; built once and cached under ``data_root()``).
* ``"voc2007"`` / ``"voc2012"``: PASCAL VOC as in Table II of the paper (:mod:`mlnb.voc`;
  20 labels; 299 px for Inception-v3).

Every loader returns a :class:`MultiLabelDataset`: ``ds[i] -> (image (C, H, W) float in [0, 1],
labels (L,) bool)``, with ``ds.labels`` ``(N, L)`` bool available without decoding any image.

Introduced in notebooks/01_target_model.ipynb.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch

from .utils import data_root
from .validate import check_choice, check_label_matrix, check_positive, check_seed

DATASETS = {
    "animals": ("train", "val", "test"),
    "voc2007": ("trainval", "train", "val", "test"),
    "voc2012": ("train", "val", "test"),
}
ANIMALS_IMAGE_SIZE = 40  # default canvas side of the offline set


class MultiLabelDataset(torch.utils.data.Dataset):
    """A multi-label image set: ``(N, L)`` bool labels and images decoded on demand.

    Either ``images`` (``(N, C, H, W)`` uint8, kept in memory) or ``load_image`` (``i -> (C, H, W)``
    float in ``[0, 1]``) supplies the pixels.
    """

    def __init__(self, name: str, split: str, labels: torch.Tensor, label_names: Sequence[str],
                 ids: Sequence[str], *, images: torch.Tensor | None = None,
                 load_image: Callable[[int], torch.Tensor] | None = None):
        if (images is None) == (load_image is None):
            raise ValueError("pass exactly one of images= (uint8 tensor) or load_image= (callable)")
        check_label_matrix(labels, "labels")
        if len(label_names) != labels.shape[1] or len(ids) != labels.shape[0]:
            raise ValueError(f"labels {tuple(labels.shape)} need one name per column and one id per row, got "
                             f"{len(label_names)} label_names and {len(ids)} ids")
        if images is not None and (not isinstance(images, torch.Tensor) or images.dtype != torch.uint8
                                   or images.dim() != 4 or images.shape[0] != labels.shape[0]):
            got = f"{tuple(images.shape)} {images.dtype}" if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images must be a uint8 tensor (N, C, H, W) with one image per label row "
                             f"(N = {labels.shape[0]}), got {got}: pass (x * 255).round().to(torch.uint8) "
                             f"for float images in [0, 1]")
        self.name, self.split = name, split
        self.labels = labels
        self.label_names = tuple(label_names)
        self.ids = list(ids)
        self._images, self._load = images, load_image

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._images is not None:
            return self._images[i].float().div(255), self.labels[i]
        return self._load(i), self.labels[i]

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def tensors(self, indices: Sequence[int] | torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Stacked images ``(n, C, H, W)`` float in ``[0, 1]`` and labels ``(n, L)`` bool of the rows
        ``indices`` (positions, or an ``(N,)`` bool mask; ``None``: all)."""
        if indices is None:
            idx = torch.arange(len(self))
        elif isinstance(indices, torch.Tensor) and indices.dtype == torch.bool:
            if indices.shape != (len(self),):
                raise ValueError(f"a bool mask of rows must have shape ({len(self)},), got {tuple(indices.shape)}")
            idx = indices.nonzero().flatten()
        else:
            idx = torch.as_tensor(indices, dtype=torch.long)
        if self._images is not None:
            return self._images[idx].float().div(255), self.labels[idx]
        return torch.stack([self._load(int(i)) for i in idx]), self.labels[idx]

    def __repr__(self) -> str:
        return f"MultiLabelDataset({self.name!r}, split={self.split!r}, n={len(self)}, labels={self.num_labels})"


def _load_animals(split: str, image_size: int, root: Path, seed: int) -> MultiLabelDataset:
    from . import animals

    part = animals.load_or_build(root, image_size, seed)[split]
    ids = [f"animals-{seed}-{split}-{i:05d}" for i in range(len(part["labels"]))]
    ds = MultiLabelDataset("animals", split, part["labels"], animals.LABEL_NAMES, ids, images=part["images"])
    ds.silhouettes = part["silhouettes"]  # (N, 4) source silhouette indices, -1 for empty slots
    return ds


def subset(ds: MultiLabelDataset, n_examples: int | None) -> MultiLabelDataset:
    """The first ``n_examples`` items of ``ds`` (all of them when ``None`` or larger than ``len(ds)``)."""
    if n_examples is None or n_examples >= len(ds):
        return ds
    keep = slice(0, n_examples)
    if ds._images is not None:
        out = MultiLabelDataset(ds.name, ds.split, ds.labels[keep], ds.label_names, ds.ids[keep],
                                images=ds._images[keep])
    else:
        out = MultiLabelDataset(ds.name, ds.split, ds.labels[keep], ds.label_names, ds.ids[keep],
                                load_image=ds._load)
    for attr in ("silhouettes", "image_paths"):
        if hasattr(ds, attr):
            setattr(out, attr, getattr(ds, attr)[keep])
    return out


def load_dataset(name: str, split: str, n_examples: int | None = None, *, image_size: int | None = None,
                 root: str | Path | None = None, download: bool = False, seed: int = 0,
                 difficult: str = "positive") -> MultiLabelDataset:
    """Load split ``split`` of data set ``name`` as a :class:`MultiLabelDataset`.

    Args:
        name: ``"animals"``, ``"voc2007"`` or ``"voc2012"`` (see ``DATASETS`` for the splits).
        split: e.g. ``"train"`` / ``"test"``; VOC 2012's ``"test"`` is the official val split (Table II).
        n_examples: keep the first ``n_examples`` items (``None``: all).
        image_size: square side in pixels (default 40 for animals, 299 for VOC).
        root: cache / data folder (default ``mlnb.utils.data_root()``; VOC looks for
            ``<root>/VOCdevkit/VOC<year>``).
        download: VOC only: let torchvision download the archives when missing.
        seed: animals only: the seed the composites are built from.
        difficult: VOC only: ``"positive"`` (a difficult object makes its class positive) or ``"ignore"``
            (:mod:`mlnb.voc`).

    Returns ``ds`` with ``ds[i] -> ((C, H, W) float in [0, 1], (L,) bool)`` and ``ds.labels (N, L)``.

    Introduced in notebooks/01_target_model.ipynb.
    """
    check_choice("data set name", name, DATASETS)
    check_choice(f"split of {name!r}", split, DATASETS[name])
    if n_examples is not None:
        check_positive("n_examples", n_examples, integer=True)
        n_examples = int(n_examples)
    if image_size is not None:
        check_positive("image_size", image_size, integer=True)
        image_size = int(image_size)
    check_seed(seed)
    root = Path(root).expanduser() if root is not None else data_root()
    if name == "animals":
        if difficult != "positive":
            raise ValueError(f"difficult={difficult!r} applies to VOC's annotations only: leave it out for 'animals'")
        ds = _load_animals(split, image_size or ANIMALS_IMAGE_SIZE, root, seed)
    else:
        from .voc import load_voc

        ds = load_voc(int(name[3:]), split, root=root, image_size=image_size or 299, download=download,
                      difficult=difficult)
    return subset(ds, n_examples)
