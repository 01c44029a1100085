"""The offline animal composites and load_dataset's contract."""
from __future__ import annotations

import pytest
import torch

from mlnb import animals
from mlnb.data import DATASETS, MultiLabelDataset, load_dataset

pytestmark = pytest.mark.unit
SIZES = {"train": 400, "val": 100, "test": 200}


@pytest.fixture(scope="module")
def built():
    return animals.build(32, seed=3, sizes=SIZES)


def test_silhouettes_are_deduplicated():
    images, classes = animals.load_silhouettes()
    assert images.shape == (9716, 28, 28) and images.dtype == torch.uint8
    assert len(torch.unique(images.flatten(1), dim=0)) == len(images)
    assert set(classes.tolist()) == set(range(10))


def test_pools_are_disjoint_and_cover_every_class():
    _, classes = animals.load_silhouettes()
    pools = animals.split_silhouettes(classes, torch.Generator().manual_seed(0))
    sets = {k: set(v.tolist()) for k, v in pools.items()}
    assert not (sets["train"] & sets["test"]) and not (sets["train"] & sets["val"]) and not (sets["val"] & sets["test"])
    assert sum(len(s) for s in sets.values()) == len(classes)
    for pool in pools.values():
        assert set(classes[pool].tolist()) == set(range(10))


def test_shapes_dtypes_and_label_consistency(built):
    _, classes = animals.load_silhouettes()
    for split, n in SIZES.items():
        part = built[split]
        assert part["images"].shape == (n, 3, 32, 32) and part["images"].dtype == torch.uint8
        y, sil = part["labels"], part["silhouettes"]
        assert y.shape == (n, 10) and y.dtype == torch.bool
        k = y.sum(1)
        assert k.min() >= 1 and k.max() <= 4
        assert torch.equal(k, (sil >= 0).sum(1))  # distinct classes: one label per silhouette
        cls = torch.where(sil >= 0, classes[sil.clamp_min(0)], torch.full_like(sil, -1))
        assert torch.equal(y, (cls[:, :, None] == torch.arange(10)).any(1))


def test_train_and_test_share_no_silhouette(built):
    train = set(built["train"]["silhouettes"].flatten().tolist()) - {-1}
    test = set(built["test"]["silhouettes"].flatten().tolist()) - {-1}
    assert train and test and not (train & test)


def test_deterministic_and_seed_dependent(built):
    again = animals.build(32, seed=3, sizes=SIZES)
    assert torch.equal(again["train"]["images"], built["train"]["images"])
    assert torch.equal(again["test"]["labels"], built["test"]["labels"])
    other = animals.build(32, seed=4, sizes=SIZES)
    assert not torch.equal(other["train"]["images"], built["train"]["images"])


def test_label_skew_dog_dominant_sheep_rare():
    y = animals.build(24, seed=0, sizes={"train": 3000})["train"]["labels"].float().mean(0)
    dog, sheep = animals.LABEL_NAMES.index("dog"), animals.LABEL_NAMES.index("sheep")
    assert y.argmax() == dog and y.argmin() == sheep
    assert y[dog] > 0.45 and y[sheep] < 0.08


def test_build_is_vectorised(monkeypatch):
    """What keeps the build fast (about 1-2 s for 2,000 canvases on 2 cores: a number for a benchmark to
    measure, never for a test to assert), counted as work: the silhouettes are read once per build and
    each split is rendered in one batched call, with one ``grid_sample`` over all of its slots, not one
    per image."""
    calls = {"load": 0, "render": [], "grid_sample": []}
    real_load, real_render, real_grid = animals.load_silhouettes, animals.render, animals.F.grid_sample

    def load():
        calls["load"] += 1
        return real_load()

    def render(sil_images, sil_idx, size, generator):
        calls["render"].append(tuple(sil_idx.shape))
        return real_render(sil_images, sil_idx, size, generator)

    def grid_sample(inp, grid, *args, **kwargs):
        calls["grid_sample"].append(inp.shape[0])
        return real_grid(inp, grid, *args, **kwargs)

    monkeypatch.setattr(animals, "load_silhouettes", load)
    monkeypatch.setattr(animals, "render", render)
    monkeypatch.setattr(animals.F, "grid_sample", grid_sample)
    out = animals.build(40, seed=1, sizes={"train": 2000, "test": 300})
    assert out["train"]["images"].shape == (2000, 3, 40, 40) and out["test"]["images"].shape == (300, 3, 40, 40)
    assert calls == {"load": 1, "render": [(2000, 4), (300, 4)], "grid_sample": [2000 * 4, 300 * 4]}


def test_load_dataset_caches_and_returns_floats(tmp_path, monkeypatch):
    builds, real_build = [], animals.build

    def counting_build(*args, **kwargs):
        builds.append(args)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(animals, "build", counting_build)
    ds = load_dataset("animals", "test", 50, image_size=24, root=tmp_path, seed=2)
    assert len(builds) == 1, "the first load builds the composites"
    assert isinstance(ds, MultiLabelDataset) and len(ds) == 50 and ds.name == "animals"
    (cache,) = (tmp_path / "animals").glob("*.pt")  # one cache file written under <root>/animals/
    stamp = (cache.stat().st_ino, cache.stat().st_mtime_ns, cache.stat().st_size)
    x, y = ds[0]
    assert x.shape == (3, 24, 24) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert y.shape == (10,) and y.dtype == torch.bool
    xs, ys = ds.tensors([0, 3])
    assert xs.shape == (2, 3, 24, 24) and torch.equal(ys, ds.labels[[0, 3]]) and torch.equal(xs[0], x)
    assert ds.label_names == animals.LABEL_NAMES and len(ds.ids) == 50
    again = load_dataset("animals", "test", 50, image_size=24, root=tmp_path, seed=2)
    assert len(builds) == 1, "a cached load must not rebuild the composites"
    assert (cache.stat().st_ino, cache.stat().st_mtime_ns, cache.stat().st_size) == stamp, "cache rewritten"
    assert list((tmp_path / "animals").iterdir()) == [cache]  # no temporary file left behind either
    assert torch.equal(again.tensors()[0], ds.tensors()[0]) and torch.equal(again.labels, ds.labels)


def test_corrupted_cache_is_rebuilt(tmp_path):
    ds = load_dataset("animals", "val", 5, image_size=16, root=tmp_path)
    (path,) = (tmp_path / "animals").glob("*.pt")
    path.write_bytes(b"not a checkpoint")
    again = load_dataset("animals", "val", 5, image_size=16, root=tmp_path)
    assert torch.equal(again.labels, ds.labels)


@pytest.mark.parametrize("kwargs, match", [
    (dict(name="mnist", split="train"), "animals"),
    (dict(name="animals", split="trainval"), "train"),
    (dict(name="animals", split="test", n_examples=0), "n_examples"),
    (dict(name="animals", split="test", n_examples=2.5), "n_examples"),
])
def test_load_dataset_validates(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_dataset(**kwargs)


def test_datasets_listing():
    assert set(DATASETS) == {"animals", "voc2007", "voc2012"}


def _tiny(n=5, labels=4):
    imgs = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 2, 2).contiguous()
    return MultiLabelDataset("t", "train", torch.eye(n, labels, dtype=torch.bool), [f"l{j}" for j in range(labels)],
                             [str(i) for i in range(n)], images=imgs)


@pytest.mark.unit
def test_tensors_takes_a_bool_mask_of_rows():
    ds = _tiny()
    x, y = ds.tensors(torch.tensor([False, False, False, True, True]))
    assert (x[:, 0, 0, 0] * 255).round().tolist() == [3.0, 4.0] and torch.equal(y, ds.labels[3:])
    assert torch.equal(ds.tensors([3, 4])[0], x)
    with pytest.raises(ValueError, match=r"bool mask of rows must have shape \(5,\)"):
        ds.tensors(torch.tensor([True, False]))


@pytest.mark.unit
def test_a_data_set_checks_its_parts_when_made():
    ds = _tiny()
    with pytest.raises(ValueError, match="images must be a uint8 tensor.*round\\(\\).to\\(torch.uint8\\)"):
        MultiLabelDataset("t", "train", ds.labels, ds.label_names, ds.ids, images=torch.rand(5, 3, 2, 2))
    with pytest.raises(ValueError, match="one name per column"):
        MultiLabelDataset("t", "train", ds.labels, ds.label_names[:2], ds.ids, images=ds._images)
    with pytest.raises(ValueError, match="labels must be a bool tensor"):
        MultiLabelDataset("t", "train", ds.labels.float(), ds.label_names, ds.ids, images=ds._images)
