"""The Pascal VOC 2012 segmentation loader on the shared aeroplane subset (never the network)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.support.paths import SHARED
from xaiarena.data import load_task
from xaiarena.data.voc import VOC_CLASSES, VOID, fg_bg_valid
from xaiarena.errors import DataError

needs_voc = pytest.mark.skipif(
    not (SHARED / "voc2012_seg" / "aeroplane.parquet").exists(),
    reason="shared voc2012_seg/aeroplane.parquet not found",
)


@pytest.fixture(scope="module")
def voc():
    if not (SHARED / "voc2012_seg" / "aeroplane.parquet").exists():
        pytest.skip("shared voc2012_seg/aeroplane.parquet not found")
    return load_task("voc2012_seg", data_dir=str(SHARED))


@needs_voc
def test_aeroplane_subset_shapes_and_labels(voc):
    test = voc.test
    assert test.images.dtype == torch.uint8 and tuple(test.images.shape) == (43, 3, 224, 224)
    assert test.masks.dtype == torch.bool and tuple(test.masks.shape) == (43, 224, 224)
    assert (test.labels == VOC_CLASSES.index("aeroplane")).all()
    assert voc.class_names[1] == "aeroplane" and voc.num_classes == 21
    assert len(voc.train) == 0  # no training split: for pretrained models
    assert all(m.any() for m in test.masks)  # every image shows an aeroplane
    assert voc.meta["file_names"][0] == "2007_000032.jpg"
    assert voc.test_names(torch.tensor([0, 2])) == [
        voc.meta["file_names"][0],
        voc.meta["file_names"][2],
    ]
    assert voc.test_names() == voc.meta["file_names"]


@needs_voc
def test_void_is_never_object_and_kept_as_valid_region(voc):
    valid = voc.meta["valid_masks"]
    assert valid.shape == voc.test.masks.shape
    assert not (voc.test.masks & ~valid).any()  # void pixels are not in the object mask
    assert 0.0 < voc.meta["void_fraction"] < 0.2


@needs_voc
def test_mask_matches_the_source_at_full_resolution(voc):
    import datasets

    ds = datasets.load_dataset(
        "parquet", data_files={"a": str(SHARED / "voc2012_seg" / "aeroplane.parquet")}
    )["a"]
    raw = np.asarray(ds[0]["mask"])
    assert ds[0]["mask"].mode == "P"
    src_share = (raw == 1).mean()
    assert abs(float(voc.test.masks[0].float().mean()) - src_share) < 0.01
    assert (raw == VOID).any()


@needs_voc
def test_options_size_subset_and_target_class():
    small = load_task("voc2012_seg", data_dir=str(SHARED), size=64, n_test=5, seed=1)
    assert tuple(small.test.images.shape) == (5, 3, 64, 64)
    again = load_task("voc2012_seg", data_dir=str(SHARED), size=64, n_test=5, seed=1)
    assert torch.equal(small.test.ids, again.test.ids)
    person = load_task("voc2012_seg", data_dir=str(SHARED), target_class="person", size=64)
    assert len(person.test) == 7 and (person.test.labels == VOC_CLASSES.index("person")).all()


def test_bad_values_are_named(tmp_path):
    with pytest.raises(ValueError, match="target_class='plane'.*aeroplane"):
        load_task("voc2012_seg", data_dir=str(tmp_path), target_class="plane")
    with pytest.raises(ValueError, match="size=8"):
        load_task("voc2012_seg", data_dir=str(tmp_path), size=8)
    with pytest.raises(
        DataError,
        match=r"has no folder 'voc2012_seg'.*voc2012_seg/<split>\.parquet for splits aeroplane",
    ):
        load_task("voc2012_seg", data_dir=str(tmp_path))


def test_no_data_dir_names_the_setting(monkeypatch):
    monkeypatch.delenv("XAIARENA_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="no Hugging Face Hub copy"):
        load_task("voc2012_seg")


def test_fg_bg_valid_excludes_void_and_matches_the_metric_without_it():
    from xaiarena.metrics import EvalBatch
    from xaiarena.registry import METRICS

    g = torch.Generator().manual_seed(0)
    a = torch.rand(4, 8, 8, generator=g) - 0.3
    m = torch.zeros(4, 8, 8, dtype=torch.bool)
    m[:, 2:5, 2:5] = True
    fg, bg = fg_bg_valid(a, m)
    batch = EvalBatch(
        model=torch.nn.Identity(),
        inputs=torch.zeros(4, 3, 8, 8),
        targets=torch.zeros(4, dtype=torch.long),
        labels=torch.zeros(4, dtype=torch.long),
        masks=m,
    )
    out = METRICS.create("fg_bg_attribution").evaluate(batch, {"e": a}, generator=g)
    assert torch.allclose(fg, out.scores["fg_mean"]["e"], atol=1e-6)
    assert torch.allclose(bg, out.scores["bg_mean"]["e"], atol=1e-6)
    # a void ring around the object with high attribution: counted as background by the metric,
    # excluded by fg_bg_valid
    a2 = torch.zeros(1, 8, 8)
    a2[0, 1:6, 1:6] = 1.0
    a2[0, 2:5, 2:5] = 0.5
    ring = torch.zeros(1, 8, 8, dtype=torch.bool)
    ring[0, 1:6, 1:6] = True
    ring[0, 2:5, 2:5] = False
    fg, bg = fg_bg_valid(a2, m[:1], ~ring)
    assert float(fg) == pytest.approx(0.5) and float(bg) == pytest.approx(0.0)


# --------------------------------------------------------------------------- min_object_fraction


def _synthetic_voc(root: Path, shares: list[float], size: int = 20) -> Path:
    """``root/voc2012_seg/aeroplane.parquet`` with one image per share: an aeroplane (1) band
    covering that share of the rows, a void (255) row after it, background elsewhere."""
    import datasets
    from PIL import Image

    imgs, masks, names = [], [], []
    for i, share in enumerate(shares):
        m = np.zeros((size, size), dtype=np.uint8)
        rows = round(share * size)
        m[:rows] = 1
        if rows < size:
            m[rows] = VOID
        masks.append(Image.fromarray(m, mode="L"))
        imgs.append(Image.fromarray(np.full((size, size, 3), 40 * i, dtype=np.uint8)))
        names.append(f"img_{i}.jpg")
    feats = datasets.Features(
        {
            "image": datasets.Image(),
            "mask": datasets.Image(),
            "file_name": datasets.Value("string"),
            "classes": datasets.Sequence(datasets.Value("int32")),
        }
    )
    ds = datasets.Dataset.from_dict(
        {"image": imgs, "mask": masks, "file_name": names, "classes": [[0, 1]] * len(shares)},
        features=feats,
    )
    (root / "voc2012_seg").mkdir(parents=True)
    ds.to_parquet(str(root / "voc2012_seg" / "aeroplane.parquet"))
    return root


def test_min_object_fraction_keeps_large_objects_synthetic(tmp_path):
    root = _synthetic_voc(tmp_path, [0.1, 0.3, 0.5, 0.2, 0.05])
    everything = load_task("voc2012_seg", data_dir=str(root), size=20)
    assert everything.meta["object_fractions"] == pytest.approx([0.1, 0.3, 0.5, 0.2, 0.05])
    assert everything.meta["min_object_fraction"] == 0.0
    big = load_task("voc2012_seg", data_dir=str(root), size=20, min_object_fraction=0.2)
    assert big.meta["file_names"] == ["img_1.jpg", "img_2.jpg", "img_3.jpg"]  # 0.2 itself is kept
    assert big.test.ids.tolist() == [1, 2, 3] and len(big.test.images) == 3
    # void pixels are in the denominator, never object
    assert big.meta["object_fractions"] == pytest.approx([0.3, 0.5, 0.2])
    assert [float(m.float().mean()) for m in big.test.masks] == pytest.approx([0.3, 0.5, 0.2])
    assert load_task("voc2012_seg", data_dir=str(root), size=20, min_object_fraction=0.31).meta[
        "file_names"
    ] == ["img_2.jpg"]
    # n_test draws from the images left, never returns a small one
    two = load_task(
        "voc2012_seg", data_dir=str(root), size=20, min_object_fraction=0.2, n_test=2, seed=3
    )
    assert len(two.test) == 2 and set(two.meta["file_names"]) <= {
        "img_1.jpg",
        "img_2.jpg",
        "img_3.jpg",
    }
    with pytest.raises(DataError, match=r"covering at least 60\.0%.*largest share .* 50\.0%"):
        load_task("voc2012_seg", data_dir=str(root), size=20, min_object_fraction=0.6)
    with pytest.raises(ValueError, match="min_object_fraction=1.5"):
        load_task("voc2012_seg", data_dir=str(root), size=20, min_object_fraction=1.5)


@needs_voc
def test_min_object_fraction_on_the_shared_aeroplanes(voc):
    """The 004 rule (aeroplane >= 20 % of the image): a strict, non-empty subset, decided per
    image."""
    plain = load_task("voc2012_seg", data_dir=str(SHARED), min_object_fraction=0.0)
    assert torch.equal(plain.test.ids, voc.test.ids)  # the default is off
    big = load_task("voc2012_seg", data_dir=str(SHARED), min_object_fraction=0.2)
    shares = voc.test.masks.flatten(1).float().mean(1)
    expected = [f for f, s in zip(voc.meta["file_names"], shares.tolist(), strict=True) if s >= 0.2]
    assert big.meta["file_names"] == expected and 0 < len(expected) < len(voc.test)
    assert all(float(m.float().mean()) >= 0.2 for m in big.test.masks)
