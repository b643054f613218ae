"""Images: loaders of every format round-trip exactly, bits/dim, image training, PNG grids, inpainting, errors."""

from __future__ import annotations

import gzip
import math
import pickle

import numpy as np
import pytest
import torch
from conftest import lose_checkpoints_after
from PIL import Image
from safetensors.torch import load_file

from maskdiff.checkpoint import CHECKPOINTS, load_run
from maskdiff.cli import main
from maskdiff.config import DataConfig, ModelConfig, RunConfig
from maskdiff.data.images import (
    RandomImages,
    images_to_tokens,
    load_cifar,
    load_folder,
    load_idx,
    load_npz,
    prepare_images,
    tokens_to_images,
)
from maskdiff.errors import MaskdiffError
from maskdiff.evaluation import evaluate_nelbo
from maskdiff.generation.images import generate_images, keep_mask
from maskdiff.models import build_denoiser
from maskdiff.nets.uvit import patchify, unpatchify
from maskdiff.objectives import MaskedDiffusion
from maskdiff.presets import get_preset
from maskdiff.training import train


# ------------------------------------------------------------------ writers of each format
def write_idx(path, array: np.ndarray) -> None:
    raw = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes() + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)


def write_cifar_batch(path, pixels: np.ndarray, labels: list[int]) -> None:
    rows = pixels.transpose(0, 3, 1, 2).reshape(len(pixels), -1)  # channel-major, as CIFAR stores them
    with open(path, "wb") as f:
        pickle.dump({b"batch_label": b"test", b"labels": labels, b"data": rows, b"filenames": [b"x"] * len(rows)}, f, protocol=2)


def random_images(n: int, size: int, channels: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, channels), dtype=np.uint8)


def blob_images(n: int, size: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Learnable grey images: a dark background with a bright square at a class-dependent side."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    pixels = np.zeros((n, size, size, 1), dtype=np.uint8)
    for i, label in enumerate(labels):
        top = rng.integers(0, size // 2)
        left = 0 if label == 0 else size // 2
        pixels[i, top : top + size // 2, left : left + size // 2] = 200
    return pixels, labels


# ------------------------------------------------------------------ loaders round-trip
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_folder_round_trips_with_its_own_test_split(tmp_path, suffix):
    train, test = random_images(7, 5, 1, seed=1), random_images(3, 5, 1, seed=2)
    write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", train[..., 0])
    write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", np.arange(7) % 10)
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", test[..., 0])
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", np.array([4, 5, 6]))
    got_train, got_test = load_idx(tmp_path)
    assert np.array_equal(got_train.pixels, train) and np.array_equal(got_test.pixels, test)
    assert got_train.labels.tolist() == list(range(7)) and got_test.labels.tolist() == [4, 5, 6]


def test_cifar_batches_round_trip(tmp_path):
    a, b, test = random_images(4, 32, 3, 1), random_images(2, 32, 3, 2), random_images(3, 32, 3, 3)
    write_cifar_batch(tmp_path / "data_batch_1", a, [0, 1, 2, 3])
    write_cifar_batch(tmp_path / "data_batch_2", b, [4, 5])
    write_cifar_batch(tmp_path / "test_batch", test, [9, 8, 7])
    train, got_test = load_cifar(tmp_path, 32, 3)
    assert np.array_equal(train.pixels, np.concatenate([a, b])) and train.labels.tolist() == [0, 1, 2, 3, 4, 5]
    assert np.array_equal(got_test.pixels, test) and got_test.labels.tolist() == [9, 8, 7]


def test_npz_round_trips_in_both_layouts(tmp_path):
    train, val = random_images(5, 8, 3, 1), random_images(2, 8, 3, 2)
    rows = train.transpose(0, 3, 1, 2).reshape(5, -1)  # downsampled-ImageNet rows, labels 1-based
    np.savez(tmp_path / "train_data_batch_1.npz", data=rows, labels=np.array([1, 2, 3, 4, 1000]), mean=np.zeros(3))
    np.savez(tmp_path / "val_data.npz", data=val, labels=np.array([1, 1]))
    got_train, got_val = load_npz(tmp_path, 8, 3)
    assert np.array_equal(got_train.pixels, train) and got_train.labels.tolist() == [0, 1, 2, 3, 999]
    assert np.array_equal(got_val.pixels, val) and got_val.labels.tolist() == [0, 0]


@pytest.mark.parametrize("channels", [1, 3])
def test_png_folder_round_trips_with_class_folders(tmp_path, channels):
    pixels = random_images(4, 6, channels)
    for i, image in enumerate(pixels):
        folder = tmp_path / ("cats" if i < 2 else "dogs")
        folder.mkdir(exist_ok=True)
        Image.fromarray(image[..., 0] if channels == 1 else image).save(folder / f"{i}.png")
    got, _ = load_folder(tmp_path, channels)
    assert np.array_equal(got.pixels, pixels) and got.labels.tolist() == [0, 0, 1, 1]


def test_tokens_are_raster_order_with_channels_innermost():
    pixels = random_images(2, 4, 3)
    tokens = images_to_tokens(pixels)
    assert tokens.shape == (2, 48) and tokens[1, (2 * 4 + 3) * 3 + 1] == int(pixels[1, 2, 3, 1])
    assert np.array_equal(tokens_to_images(tokens, 4, 3), pixels)


def test_splits_use_the_formats_test_split_and_every_image_once(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", random_images(50, 4, 1)[..., 0])
    write_idx(tmp_path / "t10k-images-idx3-ubyte", random_images(6, 4, 1, seed=3)[..., 0])
    cfg = DataConfig(format="idx", path=str(tmp_path), image_size=4, channels=1, seq_len=16, valid_fraction=0.1)
    tokenizer, splits = prepare_images(cfg)
    assert tokenizer.unit == "dim" and tokenizer.vocab_size == 256
    assert [splits.images(s).shape[0] for s in ("train", "valid", "test")] == [45, 5, 6]
    both = torch.cat([splits.images("train"), splits.images("valid")])
    assert sorted(map(tuple, both.tolist())) == sorted(map(tuple, images_to_tokens(load_idx(tmp_path)[0].pixels).tolist()))


# ------------------------------------------------------------------ bits per dim
def test_uniform_logits_give_8_bits_per_dim_in_expectation():
    """With uniform logits every masked CE is ln 256 and E[w(t) * #masked] = L (alpha(0) - alpha(1)),
    so the bound is 8 (1 - 2 eps) bits/dim; a fresh image network starts exactly at uniform logits."""
    cfg = RunConfig(
        model=ModelConfig(architecture="unet", n_layers=1, d_model=8, n_heads=1, pixel_features=4),
        data=DataConfig(format="idx", path="x", image_size=4, channels=3, seq_len=48),
    )
    torch.manual_seed(0)
    model = MaskedDiffusion(build_denoiser(cfg, 256), schedule="linear", vocab_size=256)
    x0 = images_to_tokens(random_images(1024, 4, 3))
    z = torch.full_like(x0[:2], 256)
    assert torch.allclose(model.denoiser(z, torch.rand(2)), torch.zeros(2, 48, 256))
    result = evaluate_nelbo(model, x0, batch_size=256, samples=8, seed=0)
    expected = 8 * (model.schedule.alpha(torch.tensor(0.0)) - model.schedule.alpha(torch.tensor(1.0))).item()
    assert abs(expected - 8) < 2e-3
    assert abs(result.bits_per_token - expected) < 4 * result.bits_per_token_stderr < 0.3
    # exactly, per t: E[#masked] = L (1 - alpha_t), so E[loss | t] = -alpha'(t) L ln 256 (constant for linear)
    t = torch.tensor([0.01, 0.3, 0.9])
    all_masked = torch.full((3, 48), 256)
    loss_all_masked = model.loss_from_logits(torch.zeros(3, 48, 256), x0[:3], all_masked, t)
    expected_bits = loss_all_masked * (1 - model.schedule.alpha(t)) / (48 * math.log(2))
    assert torch.allclose(expected_bits, torch.full((3,), expected), atol=1e-5)


@pytest.mark.parametrize("architecture", ["unet", "uvit"])
def test_image_denoisers_map_tokens_to_logits_with_labels(architecture):
    cfg = RunConfig(
        model=ModelConfig(
            architecture=architecture,
            n_layers=2,
            d_model=16,
            n_heads=2,
            pixel_features=4,
            num_classes=3,
            time_conditioning=True,
            **({"patch_size": 2} if architecture == "uvit" else {}),
        ),
        data=DataConfig(format="folder", path="x", image_size=4, channels=3, seq_len=48),
    )
    net = build_denoiser(cfg, 256)
    z = torch.randint(0, 257, (2, 48))
    assert net(z, torch.rand(2), labels=torch.tensor([0, 2])).shape == (2, 48, 256)
    assert net(z, torch.rand(2)).shape == (2, 48, 256)  # no labels: the null label
    with pytest.raises(MaskdiffError, match="sequences of 47"):
        net(z[:, :47], torch.rand(2))
    with pytest.raises(MaskdiffError, match="label 4 is out of range"):
        net(z, torch.rand(2), labels=torch.tensor([0, 4]))


def test_patches_hold_neighbouring_pixels_and_unpatchify_inverts():
    x = torch.arange(2 * 4 * 6 * 3).view(2, 4, 6, 3)  # [B, H, W, F]
    patches = patchify(x, 2)
    assert patches.shape == (2, 6, 12)
    # the second patch of the top row holds pixels (0..1, 2..3)
    assert patches[1, 1].view(2, 2, 3).tolist() == x[1, 0:2, 2:4].tolist()
    assert torch.equal(unpatchify(patches, 2, 4), x)


def test_random_images_resume_where_they_left_off():
    images, labels = torch.arange(40).view(10, 4), torch.arange(10)
    a = RandomImages(images, labels, batch_size=3, seed=5)
    next(a)
    b = RandomImages(images, labels, batch_size=3, seed=99)
    b.load_state_dict(a.state_dict())
    (xa, ya), (xb, yb) = next(a), next(b)
    assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(xa[:, 0] // 4, ya)


# ------------------------------------------------------------------ training, sampling, inpainting
def write_blob_dataset(root) -> None:
    """An MNIST-style folder (gzipped IDX, with labels and a t10k split) of 8x8 blob images."""
    pixels, labels = blob_images(400)
    write_idx(root / "train-images-idx3-ubyte.gz", pixels[..., 0])
    write_idx(root / "train-labels-idx1-ubyte.gz", labels)
    test_pixels, test_labels = blob_images(64, seed=1)
    write_idx(root / "t10k-images-idx3-ubyte.gz", test_pixels[..., 0])
    write_idx(root / "t10k-labels-idx1-ubyte.gz", test_labels)
    Image.fromarray(test_pixels[0, ..., 0]).save(root / "given.png")


@pytest.mark.slow
def test_a_class_conditional_image_run_resumes_exactly(tmp_path):
    """Whole-image batches, their labels and the label dropout continue bit-exactly after a crash."""
    write_blob_dataset(tmp_path)
    cfg = get_preset("image-tiny").with_overrides(
        [
            f"data.path={tmp_path}",
            "data.image_size=8",
            "data.seq_len=64",
            "data.valid_fraction=0.1",
            "model.num_classes=2",
            "model.label_dropout=0.5",
            "train.steps=6",
            "train.batch_size=4",
            "train.checkpoint_every=3",
            "train.eval_every=0",
        ]
    )
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    train(cfg, straight, progress=False)
    train(cfg, interrupted, progress=False)
    lose_checkpoints_after(interrupted, 3)
    train(cfg, interrupted, resume=True, progress=False)
    a = load_file(straight / CHECKPOINTS / "step-000006" / "model.safetensors")
    b = load_file(interrupted / CHECKPOINTS / "step-000006" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    """image-tiny (with 8x8 images and two classes) trained briefly on synthetic IDX data."""
    root = tmp_path_factory.mktemp("images")
    write_blob_dataset(root)
    out = root / "run"
    code = main(
        [
            "train",
            "--preset",
            "image-tiny",
            "--out",
            str(out),
            "--quiet",
            "--set",
            f"data.path={root}",
            "--set",
            "data.image_size=8",
            "--set",
            "data.seq_len=64",
            "--set",
            "data.valid_fraction=0.1",
            "--set",
            "model.num_classes=2",
            "--set",
            "train.steps=40",
            "--set",
            "train.batch_size=16",
            "--set",
            "train.warmup_steps=5",
            "--set",
            "train.eval_every=0",
            "--set",
            "train.log_every=10",
        ]
    )
    assert code == 0
    return root, out


@pytest.mark.slow
def test_image_tiny_trains_below_8_bits_per_dim(image_run, capsys):
    root, out = image_run
    assert main(["eval", "--checkpoint", str(out), "--json", "--quiet"]) == 0
    import json

    result = json.loads(capsys.readouterr().out)
    assert result["unit"] == "dim" and result["num_sequences"] == 64
    assert result["bits_per_token"] < 6.0  # uniform is 8; the blobs are far more predictable
    assert main(["eval", "--checkpoint", str(out), "--quiet"]) == 0
    assert "bits/dim" in capsys.readouterr().out
    (root / "text.txt").write_text("not an image")
    assert main(["eval", "--checkpoint", str(out), "--data", str(root / "text.txt"), "--quiet"]) == 1
    assert "this run models images" in capsys.readouterr().err


def test_sample_grid_is_a_png_of_the_right_size(image_run, tmp_path):
    _, out = image_run
    gen = generate_images(out, num_samples=5, steps=16, output=tmp_path / "grid.png", scale=2, show_steps=True, label=1, cfg=1.0)
    with Image.open(gen.path) as grid:
        grid.verify()
    with Image.open(gen.path) as grid:
        # 5 images -> 2 rows x 3 columns of 16x16 pixels with 2 pixels of padding
        assert grid.format == "PNG" and grid.size == (3 * 18 + 2, 2 * 18 + 2) and grid.mode == "L"
    with Image.open(gen.steps_path) as animation:
        assert animation.format == "GIF" and animation.n_frames > 2
    assert gen.images.shape == (5, 8, 8, 1)


def test_inpainting_keeps_the_given_pixels_exactly(image_run, tmp_path):
    root, out = image_run
    given = np.asarray(Image.open(root / "given.png"))
    for keep in ("top", "outside"):
        gen = generate_images(out, num_samples=3, steps=8, inpaint=root / "given.png", keep=keep, output=tmp_path / f"{keep}.png")
        kept = keep_mask(keep, 8, 1).view(8, 8).numpy()
        assert 0 < kept.sum() < 64
        for image in gen.images[..., 0]:
            assert np.array_equal(image[kept], given[kept])
    # the library route: given= of the sampler, with class labels and guidance
    model = load_run(out).model
    row = torch.where(keep_mask("left", 8, 1), images_to_tokens(given[None, :, :, None])[0], model.mask_id)
    samples = model.sample(2, 64, steps=6, given=row.expand(2, -1), labels=torch.tensor([0, 1]), cfg=2.0)
    assert torch.equal(samples[:, keep_mask("left", 8, 1)], row[keep_mask("left", 8, 1)].expand(2, -1))
    assert samples.max() < 256


def test_cli_sample_writes_the_grid_into_the_run_folder(image_run, capsys):
    _, out = image_run
    assert main(["sample", "--checkpoint", str(out), "--num-samples", "4", "--steps", "4", "--quiet", "--label", "0"]) == 0
    assert f"sample grid: {out / 'samples.png'}" in capsys.readouterr().out
    with Image.open(out / "samples.png") as grid:
        assert grid.size == (2 * 10 + 2, 2 * 10 + 2)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--label", "5"], "label 5 is out of range"),
        (["--cfg", "2"], "needs a class label"),
        (["--prompt", "x"], "--prompt apply to text runs"),
        (["--inpaint", "missing.png"], "does not exist"),
        (["--output", "grid.jpg"], "PNG file"),
    ],
)
def test_cli_image_sampling_errors_are_one_line(image_run, capsys, argv, message):
    _, out = image_run
    assert main(["sample", "--checkpoint", str(out), "--steps", "2", "--quiet", *argv]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


# ------------------------------------------------------------------ bad input
def truncate(path, keep: float = 0.6) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_truncated_files_raise_clear_errors(tmp_path):
    idx = tmp_path / "train-images-idx3-ubyte"
    write_idx(idx, random_images(4, 5, 1)[..., 0])
    truncate(idx)
    with pytest.raises(MaskdiffError, match="truncated"):
        load_idx(idx)
    gz = tmp_path / "gz" / "train-images-idx3-ubyte.gz"
    gz.parent.mkdir()
    write_idx(gz, random_images(4, 5, 1)[..., 0])
    truncate(gz)
    with pytest.raises(MaskdiffError, match="cannot read IDX file"):
        load_idx(gz.parent)
    batch = tmp_path / "data_batch_1"
    write_cifar_batch(batch, random_images(3, 32, 3), [0, 1, 2])
    truncate(batch)
    with pytest.raises(MaskdiffError, match="truncated or damaged"):
        load_cifar(batch, 32, 3)
    npz = tmp_path / "val_data.npz"
    np.savez(npz, data=random_images(3, 8, 3))
    truncate(npz)
    with pytest.raises(MaskdiffError, match="truncated or damaged"):
        load_npz(npz, 8, 3)
    png = tmp_path / "png" / "a.png"
    png.parent.mkdir()
    Image.fromarray(random_images(1, 8, 1)[0, ..., 0]).save(png)
    truncate(png)
    with pytest.raises(MaskdiffError, match="cannot read image"):
        load_folder(png.parent, 1)


def test_a_pickle_with_foreign_objects_is_refused(tmp_path):
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": math.sqrt}))
    with pytest.raises(MaskdiffError, match="refusing to load"):
        load_cifar(path, 32, 3)


def image_train(capsys, data_dir, *settings):
    code = main(["train", "--preset", "image-tiny", "--quiet", "--out", str(data_dir / "run"), "--set", f"data.path={data_dir}", *settings])
    return code, capsys.readouterr().err


def test_mixed_sizes_and_wrong_channels_are_one_line_cli_errors(tmp_path, capsys):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.fromarray(random_images(1, 8, 1)[0, ..., 0]).save(mixed / "a.png")
    Image.fromarray(random_images(1, 9, 1)[0, ..., 0]).save(mixed / "b.png")
    code, err = image_train(capsys, mixed, "--set", "data.format=folder", "--set", "data.image_size=8", "--set", "data.seq_len=64")
    assert code == 1 and "mixed sizes" in err and "a.png is 8x8" in err and err.count("\n") == 1
    rgb = tmp_path / "rgb"
    rgb.mkdir()
    Image.fromarray(random_images(1, 8, 3)[0]).save(rgb / "a.png")
    code, err = image_train(capsys, rgb, "--set", "data.format=folder", "--set", "data.image_size=8", "--set", "data.seq_len=64")
    assert code == 1 and "has 3 channels, but data.channels is 1" in err and err.count("\n") == 1
    cifar = tmp_path / "cifar"
    cifar.mkdir()
    write_cifar_batch(cifar / "data_batch_1", random_images(2, 32, 3), [0, 1])
    code, err = image_train(capsys, cifar, "--set", "data.format=cifar10", "--set", "data.image_size=32", "--set", "data.seq_len=1024")
    assert code == 1 and "do not fit 32x32 images with 1 channel " in err
    assert not (cifar / "run").exists()


def test_image_config_is_checked(tmp_path, monkeypatch):
    with pytest.raises(MaskdiffError, match="data.seq_len must be image_size"):
        get_preset("image-tiny").with_overrides(["data.image_size=8"])
    with pytest.raises(MaskdiffError, match="needs model.architecture unet or uvit"):
        get_preset("tiny").with_overrides(["model.num_classes=10"])
    with pytest.raises(MaskdiffError, match="models images; set data.format"):
        build_denoiser(get_preset("tiny").with_overrides(["model.architecture=unet"]), 65)
    # the default Fashion-MNIST folder, when missing, says how to install it
    missing = tmp_path / "fashion-mnist"
    monkeypatch.setattr("maskdiff.data.images.FASHION_MNIST_DIR", str(missing))
    with pytest.raises(MaskdiffError, match="apt-get install dataset-fashion-mnist"):
        prepare_images(get_preset("image-tiny").with_overrides([f"data.path={missing}"]).data)


def test_presets_have_the_papers_image_shapes():
    cifar, imagenet = get_preset("cifar10"), get_preset("imagenet64")
    assert (cifar.model.architecture, cifar.model.d_model, cifar.model.n_layers, cifar.model.dropout) == ("unet", 256, 8, 0.1)
    assert cifar.data.seq_len == 32 * 32 * 3 and imagenet.data.seq_len == 64 * 64 * 3
    assert imagenet.model.architecture == "uvit" and 64 % imagenet.model.patch_size == 0
