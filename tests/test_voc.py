"""The VOC loader on a tiny tree of real JPEGs (tests/voc_fixture.py), read through torchvision."""
from __future__ import annotations

import io
import tarfile

import pytest
import torch

from mlnb.data import load_dataset
from mlnb.voc import VOC_LABELS, load_voc, parse_labels, safe_extract
from voc_fixture import IMAGES, SPLITS_2007, SPLITS_2012, build_voc_tree

pytestmark = pytest.mark.unit


def _expected(ids, difficult="positive"):
    y = torch.zeros(len(ids), 20, dtype=torch.bool)
    for r, image_id in enumerate(ids):
        for cls, diff in IMAGES[image_id][1]:
            if difficult == "positive" or not diff:
                y[r, VOC_LABELS.index(cls)] = True
    return y


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    build_voc_tree(root, 2007)
    build_voc_tree(root, 2012)
    return root


@pytest.mark.parametrize("split", ["trainval", "train", "val", "test"])
def test_voc2007_splits_and_labels(voc_root, split):
    ds = load_dataset("voc2007", split, root=voc_root, image_size=64)
    assert ds.ids == SPLITS_2007[split] and ds.name == "voc2007" and ds.split == split
    assert ds.labels.dtype == torch.bool and torch.equal(ds.labels, _expected(ds.ids))
    assert ds.label_names == VOC_LABELS
    x, y = ds[0]
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1 and x.std() > 0.01


def test_single_object_and_difficult(voc_root):
    ds = load_voc(2007, "train", root=voc_root, image_size=32)
    cat = VOC_LABELS.index("cat")
    assert ds.labels[1].nonzero().flatten().tolist() == [cat]  # 000002: one <object> (a dict)
    strict = load_voc(2007, "trainval", root=voc_root, image_size=32, difficult="ignore")
    assert torch.equal(strict.labels, _expected(strict.ids, "ignore"))
    plane, chair = VOC_LABELS.index("aeroplane"), VOC_LABELS.index("chair")
    assert not strict.labels[0, plane] and not strict.labels[2, chair]  # difficult-only classes
    loose = load_voc(2007, "trainval", root=voc_root, image_size=32)
    assert loose.labels[0, plane] and loose.labels[2, chair]
    assert parse_labels({"annotation": {"object": {"name": "dog", "difficult": "1"}}}, "ignore").sum() == 0
    assert parse_labels({"annotation": {}}).sum() == 0  # an image without objects


def test_voc2012_retrain_val_test(voc_root):
    train = load_dataset("voc2012", "train", root=voc_root, image_size=32)
    val = load_dataset("voc2012", "val", root=voc_root, image_size=32)
    test = load_dataset("voc2012", "test", root=voc_root, image_size=32)
    assert sorted(train.ids + val.ids) == SPLITS_2012["train"] and not set(train.ids) & set(val.ids)
    assert len(val) == 1 and test.ids == SPLITS_2012["val"]  # official val is the test set (Table II)
    assert load_dataset("voc2012", "val", root=voc_root, image_size=32).ids == val.ids  # deterministic
    assert torch.equal(test.labels, _expected(test.ids))
    x, _ = test.tensors()
    assert x.shape == (2, 3, 32, 32)
    assert len(load_dataset("voc2012", "test", 1, root=voc_root, image_size=32)) == 1


def test_missing_folder_names_folder_and_flag(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("voc2007", "test", root=tmp_path)
    assert str(tmp_path / "VOCdevkit" / "VOC2007") in str(err.value) and "download=True" in str(err.value)


def test_unknown_split_lists_valid_ones(voc_root):
    with pytest.raises(ValueError, match="trainval"):
        load_dataset("voc2007", "retrain", root=voc_root)


def _tar_with(path, name, payload=b"x", link=None):
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo(name)
        if link:
            info.type, info.linkname = tarfile.SYMTYPE, link
            tar.addfile(info)
        else:
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


def test_safe_extract_refuses_escapes(tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    for k, (name, link) in enumerate([("../evil.txt", None), ("/abs/evil.txt", None), ("ok/link", "../../x")]):
        archive = tmp_path / f"bad{k}.tar"
        _tar_with(archive, name, link=link)
        with pytest.raises(ValueError, match="outside"):
            safe_extract(archive, target)
    assert not (tmp_path / "evil.txt").exists() and not list(target.iterdir())
    good = tmp_path / "good.tar"
    _tar_with(good, "VOCdevkit/readme.txt", b"hello")
    safe_extract(good, target)
    assert (target / "VOCdevkit" / "readme.txt").read_bytes() == b"hello"


@pytest.fixture
def own_tree(tmp_path):
    """A writable copy of the fixture tree (VOC 2007) for tests that damage it."""
    build_voc_tree(tmp_path, 2007)
    return tmp_path, tmp_path / "VOCdevkit" / "VOC2007"


def test_split_lists_with_blank_lines_a_bom_or_repeats(own_tree):
    root, base = own_tree
    lst = base / "ImageSets" / "Main" / "train.txt"
    ids = SPLITS_2007["train"]
    lst.write_text("\ufeff" + "\r\n".join(ids[:1] + [""] + ids[1:]) + "\r\n\r\n", encoding="utf-8")  # BOM, CRLF, blanks
    assert load_voc(2007, "train", root=root, image_size=8).ids == ids
    lst.write_text("\n".join(ids + ids[:1]) + "\n")
    with pytest.raises(ValueError, match=f"lists image ids more than once \\(\\['{ids[0]}'\\]\\)"):
        load_voc(2007, "train", root=root, image_size=8)


@pytest.mark.parametrize("xml, problem", [
    ("<annotation><object><name>Dog</name></object></annotation>", "unknown VOC class 'Dog'"),
    ("<annotation><object><name></name></object></annotation>", "exactly one non-empty <name>"),
    ("<annotation><object><name>dog</name><name>cat</name></object></annotation>", "exactly one non-empty <name>"),
    ("<annotation><object><name>dog", "no element found"),
    ("<annotation><object>dog</object></annotation>", "exactly one non-empty <name>"),  # no child tags
    ("<annotation><object><name>dog</name><difficult>1</difficult><difficult>1</difficult></object></annotation>",
     "at most one <difficult>"),  # used to read as not difficult under difficult="ignore"
    ("<annotation><object><name>unicorn</name><difficult>1</difficult></object></annotation>", "unknown VOC class"),
])
def test_a_malformed_annotation_is_named(own_tree, xml, problem):
    root, base = own_tree
    bad = base / "Annotations" / f"{SPLITS_2007['train'][1]}.xml"
    bad.write_text(xml)
    for difficult in ("positive", "ignore"):  # the same verdict whichever way difficult objects count
        with pytest.raises(ValueError, match=f"VOC annotation {bad} is malformed: .*{problem}"):
            load_voc(2007, "train", root=root, image_size=8, difficult=difficult)


@pytest.mark.parametrize("folder", ["JPEGImages", "Annotations"])
def test_a_listed_file_that_is_missing_is_named_when_the_set_is_loaded(own_tree, folder):
    # a missing JPEG used to surface only when a batch first read it (hours into a training run)
    root, base = own_tree
    gone = base / folder / f"{SPLITS_2007['train'][1]}.{'jpg' if folder == 'JPEGImages' else 'xml'}"
    gone.unlink()
    with pytest.raises(FileNotFoundError, match=f"1 listed files are missing.*{gone.name}.*download=True"):
        load_voc(2007, "train", root=root, image_size=8)


@pytest.mark.parametrize("level", ["VOCdevkit", "VOCdevkit/VOC2007"])
def test_a_root_one_level_too_deep_is_named(own_tree, level):
    root, _ = own_tree
    with pytest.raises(FileNotFoundError, match="pass its parent"):
        load_voc(2007, "train", root=root / level, image_size=8)


def test_a_truncated_image_is_named_and_the_set_pickles(own_tree):
    import pickle

    root, base = own_tree
    ds = load_dataset("voc2007", "train", 2, root=root, image_size=8, difficult="ignore")
    assert ds.image_paths == [str(base / "JPEGImages" / f"{i}.jpg") for i in ds.ids]  # kept by n_examples
    again = pickle.loads(pickle.dumps(ds))
    assert torch.equal(again[0][0], ds[0][0]) and torch.equal(again.labels, ds.labels)
    jpg = base / "JPEGImages" / f"{ds.ids[0]}.jpg"
    jpg.write_bytes(jpg.read_bytes()[:200])
    with pytest.raises(OSError, match=f"cannot decode the image {jpg}"):
        ds[0]


def test_a_home_relative_root_and_checked_image_size(own_tree, monkeypatch):
    root, _ = own_tree
    monkeypatch.setenv("HOME", str(root.parent))
    assert len(load_dataset("voc2007", "train", root=f"~/{root.name}", image_size=8)) == len(SPLITS_2007["train"])
    with pytest.raises(ValueError, match="image_size must be"):
        load_voc(2007, "train", root=root, image_size=0)
    with pytest.raises(ValueError, match="applies to VOC's annotations only"):
        load_dataset("animals", "test", difficult="ignore")
