"""The offline multi-label data set "animals": composites of real animal silhouettes.

Each image is a square RGB canvas holding 1 to 4 silhouettes of *distinct* classes taken from
the 10,000 real 28x28 silhouettes of the ``animal-shape-mnist`` package (10 classes, 1,000
each, 9,716 unique). Labels are the classes present, so ``y`` is ``(N, 10)`` bool, as a VOC
image's 20-label vector in Sec. IV-A of the paper.

Design (what makes the set multi-label, skewed and not trivially separable):

* the unique silhouettes are split per class into train / val / test pools (70 / 10 / 20 %),
  so no silhouette appears in two splits;
* classes are drawn without replacement with weights ``CLASS_WEIGHTS``: "dog" dominates (in
  about half of the images, like VOC's *person*) and "sheep" is rare (about 5 %, like VOC's
  *sheep*), which gives the label-specified experiments of Sec. IV-E their natural pair;
* backgrounds are two-colour gradients plus low-frequency colour texture and pixel noise; each
  silhouette gets a random hue on the other side of the background's brightness, scale, mirror and position (one
  jittered quadrant per object, so objects overlap a little but rarely hide each other).

Everything is vectorised torch (``grid_sample`` renders all silhouettes at once), deterministic
from ``seed`` and built in about a second; images are stored as ``uint8``.

Introduced in notebooks/01_target_model.ipynb.
"""
from __future__ import annotations

import gzip
import importlib.util
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .utils import replacing

LABEL_NAMES = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")
CLASS_WEIGHTS = (1.0, 1.0, 1.0, 1.0, 4.0, 1.0, 1.0, 1.0, 0.25, 1.0)  # dog dominant, sheep rare
N_OBJECTS_P = (0.30, 0.35, 0.22, 0.13)  # P(1), P(2), P(3), P(4) silhouettes per canvas
SPLIT_FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}  # of each class's unique silhouettes
DEFAULT_SIZES = {"train": 16000, "val": 1000, "test": 2000}  # canvases per split
SPLIT_SEED_OFFSET = {"train": 1, "val": 2, "test": 3}
SCALE_RANGE = (0.45, 0.7)  # silhouette side as a fraction of the canvas side
TEXTURE_AMPLITUDE = 0.3  # largest amplitude of the coarse background texture
MIN_CONTRAST = 0.3  # smallest gap between a silhouette's and its background's mean intensity (about)
VERSION = 2  # bump when the recipe changes: it is part of the cache key


def package_files() -> tuple[Path, Path]:
    """Paths of the package's two gzipped pickles (images ``(10000, 28, 28)`` uint8, labels ``(10000,)``)."""
    spec = importlib.util.find_spec("animal_shape_mnist")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the 'animals' data set needs the package animal-shape-mnist: "
                                  "pip install animal-shape-mnist==0.39")
    folder = Path(list(spec.submodule_search_locations)[0]) / "data" / "Animal Shape"
    return folder / "animal_data_version_3.gz", folder / "animal_label_version_3.gz"


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles NumPy arrays only: any other global in the stream raises ``pickle.UnpicklingError``.

    The package's files are plain pickled ``ndarray`` objects; restricting ``find_class`` means a
    tampered file cannot run code when it is read."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: only NumPy arrays are "
                                         f"expected in the animal-shape-mnist files; reinstall the package")
        return super().find_class(module, name)


def read_array_pickle(path: str | Path) -> np.ndarray:
    """A gzipped pickle holding one NumPy array, read with :class:`_ArrayUnpickler` (no code runs)."""
    with gzip.open(path, "rb") as f:
        obj = _ArrayUnpickler(f).load()
    if not isinstance(obj, np.ndarray):
        raise pickle.UnpicklingError(f"{path} does not hold a NumPy array (found {type(obj).__name__})")
    return obj


def load_silhouettes() -> tuple[torch.Tensor, torch.Tensor]:
    """The unique silhouettes: ``(M, 28, 28)`` uint8 (M = 9,716) and class ``(M,)`` int64.

    Reads the package's pickles directly (its own loader imports tensorflow) with an unpickler
    that admits NumPy arrays only, and drops exact
    duplicates, keeping the first occurrence.
    """
    data_path, label_path = package_files()
    images = np.asarray(read_array_pickle(data_path), dtype=np.uint8)
    classes = np.asarray(read_array_pickle(label_path), dtype=np.int64)
    _, first = np.unique(images.reshape(len(images), -1), axis=0, return_index=True)
    keep = np.sort(first)
    return torch.from_numpy(images[keep].copy()), torch.from_numpy(classes[keep].copy())


def split_silhouettes(classes: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Disjoint per-class pools of silhouette indices for train / val / test (``SPLIT_FRACTIONS``)."""
    pools = {s: [] for s in SPLIT_FRACTIONS}
    for c in range(len(LABEL_NAMES)):
        idx = (classes == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        n_val = int(round(len(idx) * SPLIT_FRACTIONS["val"]))
        n_test = int(round(len(idx) * SPLIT_FRACTIONS["test"]))
        pools["test"].append(idx[:n_test])
        pools["val"].append(idx[n_test:n_test + n_val])
        pools["train"].append(idx[n_test + n_val:])
    return {s: torch.cat(v).sort().values for s, v in pools.items()}


def _sample_classes(n: int, generator: torch.Generator) -> torch.Tensor:
    """``(n, 4)`` distinct classes per canvas (Gumbel top-k on ``CLASS_WEIGHTS``); -1 marks unused slots."""
    logw = torch.tensor(CLASS_WEIGHTS).log()
    gumbel = -torch.log(-torch.log(torch.rand(n, len(LABEL_NAMES), generator=generator).clamp_min(1e-12)))
    order = (logw + gumbel).argsort(dim=1, descending=True)[:, :4]
    k = torch.multinomial(torch.tensor(N_OBJECTS_P), n, replacement=True, generator=generator) + 1
    return torch.where(torch.arange(4)[None, :] < k[:, None], order, torch.full_like(order, -1))


def _pick_silhouettes(cls: torch.Tensor, pool: torch.Tensor, classes: torch.Tensor,
                      generator: torch.Generator) -> torch.Tensor:
    """For each class in ``cls`` ``(n, 4)`` a random silhouette of that class from ``pool`` (-1 stays -1)."""
    pool_cls = classes[pool]
    order = pool_cls.argsort(stable=True)
    sorted_pool = pool[order]
    counts = torch.bincount(pool_cls, minlength=len(LABEL_NAMES))
    starts = torch.cumsum(counts, 0) - counts
    c = cls.clamp_min(0)
    r = (torch.rand(cls.shape, generator=generator) * counts[c]).long()
    sil = sorted_pool[starts[c] + r]
    return torch.where(cls >= 0, sil, torch.full_like(sil, -1))


def _backgrounds(n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """``(n, 3, size, size)`` float backgrounds: a random two-colour gradient plus coarse colour texture."""
    c0, c1 = torch.rand(n, 3, 1, 1, generator=generator), torch.rand(n, 3, 1, 1, generator=generator)
    angle = torch.rand(n, 1, 1, generator=generator) * 2 * torch.pi
    ramp = torch.linspace(-1, 1, size)
    t = (torch.cos(angle) * ramp[None, None, :] + torch.sin(angle) * ramp[None, :, None]) * 0.5 + 0.5
    bg = c0 + (c1 - c0) * t[:, None]
    coarse = torch.rand(n, 3, 6, 6, generator=generator) - 0.5
    up = F.interpolate(torch.eye(6)[:, None], size=size, mode="linear", align_corners=False)[:, 0]  # (6, S)
    texture = torch.einsum("as,ncab,bt->ncst", up, coarse, up)  # separable bilinear upsampling
    amp = torch.rand(n, 1, 1, 1, generator=generator) * TEXTURE_AMPLITUDE
    return bg.add_(texture.mul_(amp))


def render(sil_images: torch.Tensor, sil_idx: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Composite the silhouettes ``sil_idx`` ``(n, 4)`` (-1: none) onto backgrounds.

    Returns ``(n, 3, size, size)`` uint8. Slot ``s`` sits in a jittered quadrant (a random
    permutation per canvas), scaled to 45-70 % of the canvas, randomly mirrored and coloured.
    """
    n = sil_idx.shape[0]
    canvas = _backgrounds(n, size, generator)
    quad = torch.rand(n, 4, generator=generator).argsort(1)  # quadrant of each slot
    centre = torch.stack([(quad % 2).float(), (quad // 2).float()], -1) * 0.8 - 0.4  # in [-1, 1] coords
    centre = centre + (torch.rand(n, 4, 2, generator=generator) - 0.5) * 0.3
    lo, hi = SCALE_RANGE
    scale = lo + (hi - lo) * torch.rand(n, 4, generator=generator)  # object side / canvas side
    flip = torch.where(torch.rand(n, 4, generator=generator) < 0.5, -1.0, 1.0)
    # a random hue whose brightness is on the other side of the background's (a contrast of at
    # least MIN_CONTRAST in mean intensity), so that every silhouette is visible
    bg_light = canvas.mean((1, 2, 3)) > 0.5  # (n,)
    colour = torch.rand(n, 4, 3, generator=generator) * (1 - MIN_CONTRAST) * 0.5
    colour = torch.where(bg_light[:, None, None], colour, 1 - colour)
    src = sil_images[sil_idx.clamp_min(0)].float().div(255).unsqueeze(2)  # (n, 4, 1, 28, 28)
    theta = torch.zeros(n, 4, 2, 3)  # affine maps from canvas to silhouette coordinates
    theta[..., 0, 0] = flip / scale
    theta[..., 1, 1] = 1 / scale
    theta[..., :, 2] = -centre / scale[..., None] * torch.stack([flip, torch.ones_like(flip)], -1)
    coords = (torch.arange(size) * 2 + 1) / size - 1  # pixel centres in [-1, 1]
    gx = theta[..., 0, 0, None] * coords + theta[..., 0, 2, None]  # (n, 4, S): x depends on column only
    gy = theta[..., 1, 1, None] * coords + theta[..., 1, 2, None]  # (n, 4, S): y depends on row only
    grid = torch.stack(torch.broadcast_tensors(gx[..., None, :], gy[..., :, None]), -1).view(-1, size, size, 2)
    alpha = F.grid_sample(src.view(-1, 1, 28, 28), grid, align_corners=False).view(n, 4, 1, size, size)
    alpha = alpha * (sil_idx >= 0).float()[..., None, None, None]
    for s in range(4):  # 4 slots, vectorised over canvases
        canvas.lerp_(colour[:, s, :, None, None].expand_as(canvas), alpha[:, s])
    canvas.add_(torch.randn(canvas.shape, generator=generator), alpha=0.03)
    return canvas.clamp_(0, 1).mul_(255).round_().to(torch.uint8)


def build(image_size: int, seed: int, sizes: dict[str, int] | None = None) -> dict:
    """Build every split. Returns ``{split: {"images": (N, 3, S, S) uint8, "labels": (N, 10) bool,
    "silhouettes": (N, 4) int64 source indices (-1: empty slot)}}`` plus ``"meta"``."""
    sizes = dict(DEFAULT_SIZES if sizes is None else sizes)
    sil_images, classes = load_silhouettes()
    pools = split_silhouettes(classes, torch.Generator().manual_seed(seed))
    out = {"meta": {"version": VERSION, "image_size": image_size, "seed": seed, "sizes": sizes,
                    "label_names": list(LABEL_NAMES)}}
    for split, n in sizes.items():
        g = torch.Generator().manual_seed(seed * 10 + SPLIT_SEED_OFFSET[split])
        cls = _sample_classes(n, g)
        sil = _pick_silhouettes(cls, pools[split], classes, g)
        labels = (cls[:, :, None] == torch.arange(len(LABEL_NAMES))).any(1)  # (n, 10) bool
        out[split] = {"images": render(sil_images, sil, image_size, g), "labels": labels, "silhouettes": sil}
    return out


def cache_path(root: Path, image_size: int, seed: int, sizes: dict[str, int]) -> Path:
    """``<root>/animals/animals-v<VERSION>-s<size>-seed<seed>-<n_train>-<n_val>-<n_test>.pt``."""
    tag = "-".join(str(sizes[s]) for s in ("train", "val", "test"))
    return Path(root) / "animals" / f"animals-v{VERSION}-s{image_size}-seed{seed}-{tag}.pt"


def load_or_build(root: Path, image_size: int, seed: int, sizes: dict[str, int] | None = None) -> dict:
    """Load the cached build (``weights_only=True``) or build it and write the cache atomically."""
    sizes = dict(DEFAULT_SIZES if sizes is None else sizes)
    path = cache_path(root, image_size, seed, sizes)
    if path.is_file():
        try:
            return torch.load(path, weights_only=True)
        except Exception:  # a corrupted cache is rebuilt below
            path.unlink(missing_ok=True)
    data = build(image_size, seed, sizes)
    with replacing(path) as tmp:
        torch.save(data, tmp)
    return data
