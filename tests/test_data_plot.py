"""helpers.data's MNIST subset and input checks; helpers.plot's Chinese font."""
from __future__ import annotations

import logging
import warnings

import matplotlib.pyplot as plt
import pytest
import torch
from matplotlib import font_manager

from helpers import data, plot

needs_mnist = pytest.mark.skipif(not (data.cache_dir() / "MNIST" / "raw" / "train-images-idx3-ubyte").exists(),
                                 reason="data cache not filled (python -m helpers.data --from ../shared/data)")


def _pairs(images: torch.Tensor, labels: torch.Tensor) -> list[tuple[str, int]]:
    return list(zip(data.mnist_image_hashes(images), labels.tolist()))


# --------------------------------------------------------------------------- MNIST subset

def test_subset_list_is_the_committed_api():
    subset = data.mnist_train_subset()
    assert len(subset) == data.MNIST_TRAIN_SIZE == 5000 and data.MNIST_TEST_SIZE == 10000
    assert torch.bincount(torch.tensor([y for _, y in subset])).tolist() == [500] * 10
    assert len({h for h, _ in subset}) == len(subset)  # no duplicate images, no short-hash collisions
    assert all(len(h) == 16 and int(h, 16) >= 0 for h, _ in subset)


@needs_mnist
def test_mirror_cache_gives_the_listed_subset_in_mirror_order():
    raw = data.cache_dir() / "MNIST" / "raw"
    ds = data.load_mnist(train=True)
    assert len(ds) == data.MNIST_TRAIN_SIZE and ds.data.dtype == torch.uint8 and ds.data.shape[1:] == (28, 28)
    assert torch.equal(ds.data, data._read_idx(raw / "train-images-idx3-ubyte"))
    assert _pairs(ds.data, ds.targets) == list(data.mnist_train_subset())
    image, label = ds[0]
    assert isinstance(label, int)
    assert len(data.load_mnist(train=False)) == data.MNIST_TEST_SIZE


@needs_mnist
def test_selection_from_a_fake_download_returns_the_mirror_subset():
    """A stand-in for torchvision's 60,000 digits: the subset's images hidden, shuffled, among random images."""
    mirror = data.load_mnist(train=True)
    g = torch.Generator().manual_seed(0)
    n = 60_000
    images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    where = torch.randperm(n, generator=g)[: len(mirror)]
    images[where], labels[where] = mirror.data, mirror.targets
    x, y = data.select_mnist_subset(images, labels, data.mnist_train_subset())
    assert torch.equal(x, mirror.data) and torch.equal(y, mirror.targets)

    images[where[1234]] = 0  # one digit of the list is not in the "download"
    with pytest.raises(ValueError, match=r"1 of the 5000 images of the MNIST subset are not among the 60000.*#1234"):
        data.select_mnist_subset(images, labels, data.mnist_train_subset())


def test_selection_handles_duplicates_labels_and_collisions():
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (6, 28, 28), dtype=torch.uint8, generator=g)
    images[4] = images[1]  # the same digit twice in the download
    labels = torch.tensor([3, 1, 4, 1, 1, 5])
    pairs = _pairs(images, labels)
    wanted = [pairs[5], pairs[1], pairs[0], pairs[1]]  # and twice in the list: matched in download order
    x, y = data.select_mnist_subset(images, labels, wanted)
    assert torch.equal(x, images[[5, 1, 0, 4]]) and y.tolist() == [5, 1, 3, 1]
    with pytest.raises(ValueError, match=r"#2 \(hash \w+, label 1\)"):  # a third copy is not there
        data.select_mnist_subset(images, labels, [pairs[1], pairs[1], pairs[1]])
    with pytest.raises(ValueError, match=r"label 7; found with label \[3\]"):
        data.select_mnist_subset(images, labels, [(pairs[0][0], 7)])
    fake = ["aaaaaaaaaaaaaaaa"] * 2 + data.mnist_image_hashes(images[2:])  # two different images, one short hash
    with pytest.raises(ValueError, match="hash collision"):
        data.select_mnist_subset(images, torch.tensor([1, 1, 4, 1, 1, 5]), [("aaaaaaaaaaaaaaaa", 1)], fake)


def test_selection_and_loader_reject_bad_input():
    images = torch.zeros(3, 28, 28, dtype=torch.uint8)
    with pytest.raises(TypeError, match="uint8 tensor"):
        data.select_mnist_subset(images.float(), torch.zeros(3, dtype=torch.long), [])
    with pytest.raises(ValueError, match=r"labels must be a tensor of shape \(3,\)"):
        data.select_mnist_subset(images, torch.zeros(2, dtype=torch.long), [])
    for bad in ("no", 1, None):
        with pytest.raises(TypeError, match="train must be True .* or False"):
            data.load_mnist(train=bad)


def test_subset_list_generator_roundtrip(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    g = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (data.MNIST_TRAIN_SIZE, 28, 28), dtype=torch.uint8, generator=g)
    labels = torch.arange(data.MNIST_TRAIN_SIZE) % 10
    (raw / "train-images-idx3-ubyte").write_bytes(b"\0\0\x08\x03" + b"".join(d.to_bytes(4, "big") for d in
                                                                             images.shape) + images.numpy().tobytes())
    (raw / "train-labels-idx1-ubyte").write_bytes(b"\0\0\x08\x01" + len(labels).to_bytes(4, "big")
                                                  + labels.to(torch.uint8).numpy().tobytes())
    out = data.write_mnist_subset_list(tmp_path, tmp_path / "list.txt")
    assert data.mnist_train_subset(out) == tuple(_pairs(images, labels))
    (raw / "train-labels-idx1-ubyte").write_bytes(b"\0\0\x08\x01" + len(labels).to_bytes(4, "big") + bytes(len(labels)))
    with pytest.raises(ValueError, match=r"500 per class"):
        data.write_mnist_subset_list(tmp_path, tmp_path / "list2.txt")


def test_csv_dataset_rejects_empty_files(tmp_path):
    for name, text in (("empty.csv", ""), ("header.csv", "label,review\n")):
        (tmp_path / name).write_text(text, encoding="utf-8")
        with pytest.raises(ValueError, match=f"{name} has no data rows"):
            data._csv_dataset(tmp_path / name)
    (tmp_path / "ok.csv").write_text("label,review\n1,好\n", encoding="utf-8")
    assert data._csv_dataset(tmp_path / "ok.csv")[0] == {"label": 1, "review": "好"}


# --------------------------------------------------------------------------- Chinese in figures

LABELS = ("訓練損失與驗證準確率", "注意力權重", "詞嵌入 embedding −0.5", "西游记 训练损失")


def _font_file_cmap(name: str) -> dict[int, str]:
    from fontTools.ttLib import TTFont
    path = font_manager.findfont(font_manager.FontProperties(family=name), fallback_to_default=False)
    with TTFont(str(path), fontNumber=getattr(path, "face_index", 0), lazy=True) as f:
        return f.getBestCmap()


def test_set_style_draws_chinese_without_missing_glyphs(caplog):
    plot.set_style()
    name = plot.cjk_font()
    if name is None:
        pytest.skip("no CJK font installed and noto-cjk-sans-otc missing (pip install -r requirements.txt)")
    assert plt.rcParams["font.sans-serif"][0] == name
    cmap = _font_file_cmap(name)
    assert not [c for c in "".join(LABELS) if c != " " and ord(c) not in cmap]
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING, "matplotlib"):
        warnings.simplefilter("always")
        fig, ax = plt.subplots()
        ax.plot([0, 1], [1, -1], label=LABELS[2])
        ax.set_title(LABELS[0])
        ax.set_xlabel(LABELS[1])
        ax.set_ylabel(LABELS[3])
        ax.legend()
        fig.canvas.draw()
        plt.close(fig)
    assert not [str(w.message) for w in caught if "missing from font" in str(w.message)]
    assert "not found" not in caplog.text


def test_cjk_font_registers_the_packaged_font_when_none_is_installed(monkeypatch):
    pytest.importorskip("noto_cjk_sans_otc")
    fm = font_manager.fontManager
    monkeypatch.setattr(fm, "ttflist", [f for f in fm.ttflist if not any(w in f.name for w in plot._CJK_FAMILIES)])
    assert plot._installed_cjk_font() is None
    name = plot.cjk_font()
    assert name in ("Noto Sans CJK TC", "Noto Sans CJK JP")  # JP: matplotlib < 3.11 reads only a .ttc's first face
    assert any(f.name == name and "noto_cjk_sans_otc" in f.fname for f in fm.ttflist)
    fm._findfont_cached.cache_clear()


# --------------------------------------------------------------------------- architecture diagrams

def test_draw_stack_places_boxes_bottom_to_top_and_draws_skips_and_frame():
    from matplotlib.patches import FancyBboxPatch, Rectangle
    fig, ax = plt.subplots()
    centres = plot.draw_stack(ax, ["嵌入 (wte)", "LayerNorm (ln_1)", "注意力 (attn)"], x=1.0, y=2.0, height=0.5, gap=0.25,
                              colors=["#fff", "#eee", "#ddd"], skips=[(1, 2)], repeat=(1, 2, "12 ×"))
    assert centres == [(1.0, 2.0), (1.0, 2.75), (1.0, 3.5)]
    boxes = [p for p in ax.patches if isinstance(p, FancyBboxPatch)]
    assert len(boxes) == 3 and [b.get_y() + b.get_height() / 2 for b in boxes] == [2.0, 2.75, 3.5]
    assert sum(isinstance(p, Rectangle) and not isinstance(p, FancyBboxPatch) for p in ax.patches) == 1  # the N × frame
    texts = [t.get_text() for t in ax.texts]
    assert "注意力 (attn)" in texts and "12 ×" in texts and texts.count("⊕") == 1
    plt.close(fig)


@pytest.mark.parametrize("kwargs, match", [
    (dict(labels=[]), "non-empty"),
    (dict(labels=["a", 3]), "strings"),
    (dict(labels=["a", "b"], colors=["red"]), "one colour per label"),
    (dict(labels=["a", "b"], skips=[(1, 0)]), "skip"),
    (dict(labels=["a", "b"], skips=[(0, 2)]), "skip"),
    (dict(labels=["a", "b"], repeat=(0, 5, "N ×")), "repeat"),
])
def test_draw_stack_rejects_bad_input(kwargs, match):
    fig, ax = plt.subplots()
    with pytest.raises(ValueError, match=match):
        plot.draw_stack(ax, **kwargs)
    plt.close(fig)
