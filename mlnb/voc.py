"""PASCAL VOC 2007 / 2012 as multi-label sets (Sec. IV-A, Table II of the paper).

Splits (``SPLITS``):

* VOC 2007: ``trainval`` (5,011 images, the paper's retraining + validation), ``train``, ``val``
  and ``test`` (4,952);
* VOC 2012: the official ``train`` list (5,717) is split deterministically into ``train``
  (retraining, 90 %) and ``val`` (validation, 10 %) by a fixed-seed permutation of the sorted
  ids; the official ``val`` list (5,823) is ``test``, since the official test labels are private.

Labels: a ``(N, 20)`` bool vector per image, in ``VOC_LABELS`` order, read from the XML
annotations once (no image decoding). ``difficult`` objects: with ``difficult="positive"`` (the
default) they make their class positive -- the object *is* in the picture, and an attack that
hides it should have to hide it; ``difficult="ignore"`` counts only non-difficult objects (a
class seen only as difficult is then negative). Images are resized (without keeping the aspect
ratio) to ``image_size`` x ``image_size``, 299 px for Inception-v3.

Files come from ``torchvision.datasets.VOCDetection``. ``download=True`` fetches the official
archives with torchvision's md5-checked ``download_url`` and unpacks them with
:func:`safe_extract`, which refuses members that would land outside the target folder
(torchvision's own extraction does not check this).

Introduced in notebooks/01_target_model.ipynb.
"""
from __future__ import annotations

import tarfile
from collections import Counter
from pathlib import Path
from xml.etree.ElementTree import ParseError

import torch
import torchvision.datasets as tvd
from PIL import Image
from torchvision.datasets.utils import download_url
from torchvision.datasets.voc import DATASET_YEAR_DICT, ET_parse
from torchvision.transforms.functional import pil_to_tensor

from .validate import check_choice, check_positive

VOC_LABELS = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
              "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
              "train", "tvmonitor")
SPLITS = {2007: ("trainval", "train", "val", "test"), 2012: ("train", "val", "test")}
DIFFICULT_CHOICES = ("positive", "ignore")
VOC2012_VAL_FRACTION = 0.1  # share of the official 2012 train list held out for validation
VOC2012_SPLIT_SEED = 0


def safe_extract(archive: str | Path, target: str | Path) -> None:
    """Extract a tar archive into ``target``, refusing absolute paths, ``..`` escapes, links that
    point outside ``target`` and device files (``ValueError`` naming the member)."""
    target = Path(target).resolve()
    with tarfile.open(archive) as tar:
        for m in tar.getmembers():
            dest = (target / m.name).resolve()
            if target != dest and target not in dest.parents:
                raise ValueError(f"archive {archive} member {m.name!r} would be written outside {target}")
            if m.issym() or m.islnk():
                link = (dest.parent / m.linkname).resolve() if m.issym() else (target / m.linkname).resolve()
                if target not in link.parents:
                    raise ValueError(f"archive {archive} member {m.name!r} links outside {target}")
            elif not (m.isfile() or m.isdir()):
                raise ValueError(f"archive {archive} member {m.name!r} is not a regular file or folder")
        kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(target, **kwargs)


def download_voc(root: str | Path, year: int, official_split: str) -> None:
    """Fetch and unpack the official archive holding ``official_split`` of VOC ``year`` into ``root``."""
    key = "2007-test" if (year == 2007 and official_split == "test") else str(year)
    info = DATASET_YEAR_DICT[key]
    download_url(info["url"], str(root), filename=info["filename"], md5=info["md5"])
    safe_extract(Path(root) / info["filename"], root)


def _official(year: int, split: str) -> str:
    if year == 2012:
        return {"train": "train", "val": "train", "test": "val"}[split]
    return split


def parse_labels(annotation: dict, difficult: str = "positive") -> torch.Tensor:
    """``(20,)`` bool labels from a ``VOCDetection.parse_voc_xml`` dict (a single ``<object>``
    comes back as a dict, several as a list)."""
    objects = annotation.get("annotation", {}).get("object", [])
    if isinstance(objects, dict):
        objects = [objects]
    y = torch.zeros(len(VOC_LABELS), dtype=torch.bool)
    for obj in objects:
        name = obj.get("name") if isinstance(obj, dict) else None
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"an <object> needs exactly one non-empty <name>, got {name!r}")
        name = name.strip()
        if name not in VOC_LABELS:
            raise ValueError(f"unknown VOC class {name!r} in an annotation: expected one of {VOC_LABELS}")
        flag = obj.get("difficult", "0")
        if not isinstance(flag, str) or flag.strip() not in ("", "0", "1"):
            raise ValueError(f"an <object> ({name}) needs at most one <difficult> of 0 or 1, got {flag!r}")
        if difficult == "ignore" and flag.strip() == "1":
            continue
        y[VOC_LABELS.index(name)] = True
    return y


def _split_2012(ids: list[str], split: str) -> list[int]:
    """Indices of the retraining (``train``) or validation (``val``) part of the official 2012 train list."""
    order = sorted(range(len(ids)), key=lambda i: ids[i])
    perm = torch.randperm(len(ids), generator=torch.Generator().manual_seed(VOC2012_SPLIT_SEED)).tolist()
    n_val = int(round(len(ids) * VOC2012_VAL_FRACTION))
    chosen = [order[p] for p in (perm[:n_val] if split == "val" else perm[n_val:])]
    return sorted(chosen, key=lambda i: ids[i])


def load_image(path: str, image_size: int) -> torch.Tensor:
    """A JPEG as ``(3, image_size, image_size)`` float in ``[0, 1]`` (bilinear, antialiased); a file that
    cannot be decoded (e.g. truncated) raises ``OSError`` naming it."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB").resize((image_size, image_size), Image.BILINEAR)
            return pil_to_tensor(im).float().div(255)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise OSError(f"cannot decode the image {path}: {e} (delete it and fetch the archive again)") from e


class ImageFiles:
    """``i -> load_image(paths[i], image_size)``: the pixels of a VOC set, picklable (for DataLoader workers
    that spawn their processes)."""

    def __init__(self, paths: list[str], image_size: int):
        self.paths, self.image_size = paths, image_size

    def __call__(self, i: int) -> torch.Tensor:
        return load_image(self.paths[i], self.image_size)


def read_ids(split_file: Path) -> list[str]:
    """The image ids of a VOC split list, one per line: surrounding whitespace, blank lines and a UTF-8 byte
    order mark are ignored; an id listed twice is a ``ValueError`` (it would count twice, and in VOC 2012 could
    fall on both sides of the retraining / validation split)."""
    ids = [line.strip() for line in split_file.read_text(encoding="utf-8-sig").splitlines()]
    ids = [i for i in ids if i]
    repeated = sorted(i for i, n in Counter(ids).items() if n > 1)
    if repeated:
        raise ValueError(f"{split_file} lists image ids more than once ({repeated[:5]}): remove the repeats")
    return ids


def read_labels(base, annotation: Path, difficult: str) -> torch.Tensor:
    """``(20,)`` bool labels of one annotation file; a malformed file is a ``ValueError`` naming it."""
    try:
        return parse_labels(base.parse_voc_xml(ET_parse(str(annotation)).getroot()), difficult)
    except (ParseError, ValueError) as e:
        raise ValueError(f"VOC annotation {annotation} is malformed: {e}") from e


def load_voc(year: int, split: str, *, root: str | Path, image_size: int = 299, download: bool = False,
             difficult: str = "positive"):
    """PASCAL VOC ``year`` split ``split`` as a :class:`mlnb.data.MultiLabelDataset` (see module doc).

    Looks for ``<root>/VOCdevkit/VOC<year>``; when it is missing and ``download`` is False raises
    ``FileNotFoundError`` naming the folder and the ``download=True`` flag.

    Reached through :func:`mlnb.data.load_dataset` (``"voc2007"``, ``"voc2012"``), which
    notebooks/01_target_model.ipynb calls (VOC with the ``paper`` preset).
    """
    from .data import MultiLabelDataset

    check_choice("VOC year", year, SPLITS)
    check_choice(f"split of VOC {year}", split, SPLITS[year])
    check_choice("difficult", difficult, DIFFICULT_CHOICES)
    check_positive("image_size", image_size, integer=True)
    root = Path(root).expanduser()
    official = _official(year, split)
    folder = root / "VOCdevkit" / f"VOC{year}"
    split_file = folder / "ImageSets" / "Main" / f"{official}.txt"
    if download and not split_file.is_file():
        download_voc(root, year, official)
    if not folder.is_dir():
        off = (f" ({root} is itself {root.name}/: pass its parent{'' if root.name == 'VOCdevkit' else ' parent'} "
               f"as root)") if root.name in ("VOCdevkit", f"VOC{year}") else ""
        raise FileNotFoundError(f"PASCAL VOC {year} not found: no folder {folder}{off}. Pass download=True "
                                f"(load_dataset('voc{year}', {split!r}, download=True)) to fetch it, or "
                                f"root=<folder holding VOCdevkit/>")
    if not split_file.is_file():
        raise FileNotFoundError(f"VOC {year} split list {split_file} is missing (the {official!r} archive is not "
                                f"unpacked there): pass download=True to fetch it")
    base = tvd.VOCDetection(str(root), year=str(year), image_set=official, download=False)  # its XML parser
    ids = read_ids(split_file)
    keep = _split_2012(ids, split) if year == 2012 and split in ("train", "val") else list(range(len(ids)))
    images = [str(folder / "JPEGImages" / f"{ids[i]}.jpg") for i in keep]
    missing = [f for i, f in zip(keep, images) if not Path(f).is_file()]
    missing += [str(folder / "Annotations" / f"{ids[i]}.xml") for i in keep
                if not (folder / "Annotations" / f"{ids[i]}.xml").is_file()]
    if missing:  # found now, not when a batch first reads the image hours into training
        raise FileNotFoundError(f"VOC {year} {split}: {len(missing)} listed files are missing ({missing[:3]}): "
                                f"unpack the archive again, or pass download=True to fetch it")
    labels = (torch.stack([read_labels(base, folder / "Annotations" / f"{ids[i]}.xml", difficult) for i in keep])
              if keep else torch.zeros(0, 20, dtype=torch.bool))
    ds = MultiLabelDataset(f"voc{year}", split, labels, VOC_LABELS, [ids[i] for i in keep],
                           load_image=ImageFiles(images, int(image_size)))
    ds.image_paths = images
    return ds

