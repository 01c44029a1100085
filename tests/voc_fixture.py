"""Build a tiny PASCAL VOC tree with real JPEGs (scikit-image's sample photos) for the loader tests."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data as skdata

# id -> (photo, [(class, difficult), ...]); one object only -> VOCDetection returns a dict
IMAGES = {
    "000001": ("astronaut", [("person", 0), ("aeroplane", 1)]),
    "000002": ("chelsea", [("cat", 0)]),
    "000003": ("coffee", [("diningtable", 0), ("bottle", 0), ("chair", 1)]),
    "000004": ("camera", [("person", 0)]),
    "000005": ("rocket", [("aeroplane", 0), ("person", 1), ("person", 0)]),
    "000006": ("logo", [("motorbike", 0)]),
    "000007": ("horse", [("horse", 0), ("dog", 1)]),
    "000008": ("coins", [("bottle", 1)]),
}
SPLITS_2007 = {"train": ["000001", "000002"], "val": ["000003"], "trainval": ["000001", "000002", "000003"],
               "test": ["000004", "000005"]}
SPLITS_2012 = {"train": ["000001", "000002", "000003", "000004", "000005", "000006"], "val": ["000007", "000008"]}


def _photo(name: str) -> np.ndarray:
    img = getattr(skdata, name)()
    if img.dtype != np.uint8:  # e.g. the horse silhouette is bool
        img = (img.astype(np.float64) * 255 / max(float(img.max()), 1)).astype(np.uint8)
    if img.ndim == 2:
        img = np.stack([img] * 3, -1)
    return np.ascontiguousarray(img[..., :3])


def _annotation(image_id: str, shape, objects) -> ET.Element:
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    size = ET.SubElement(root, "size")
    for tag, v in zip(("height", "width", "depth"), shape):
        ET.SubElement(size, tag).text = str(v)
    for cls, difficult in objects:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = cls
        ET.SubElement(obj, "difficult").text = str(difficult)
        box = ET.SubElement(obj, "bndbox")
        for tag, v in zip(("xmin", "ymin", "xmax", "ymax"), (1, 1, shape[1] // 2, shape[0] // 2)):
            ET.SubElement(box, tag).text = str(v)
    return root


def build_voc_tree(root: str | Path, year: int = 2007) -> Path:
    """Write ``<root>/VOCdevkit/VOC<year>/{Annotations, JPEGImages, ImageSets/Main}``; returns ``root``."""
    base = Path(root) / "VOCdevkit" / f"VOC{year}"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    for image_id, (photo, objects) in IMAGES.items():
        img = _photo(photo)
        Image.fromarray(img).save(base / "JPEGImages" / f"{image_id}.jpg", quality=85)
        ET.ElementTree(_annotation(image_id, img.shape if img.ndim == 3 else (*img.shape, 3), objects)).write(
            base / "Annotations" / f"{image_id}.xml")
    for split, ids in (SPLITS_2007 if year == 2007 else SPLITS_2012).items():
        (base / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return Path(root)
