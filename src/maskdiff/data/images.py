"""Image data sets as token sequences: readers for the standard local formats, splits and batches.

Every image becomes a sequence of H*W*C tokens in 0..255, in raster order with the channels of
a pixel next to each other (index ``(h * W + w) * C + c``). Formats (``data.format``):

- ``idx``: MNIST / Fashion-MNIST IDX files, plain or ``.gz``. ``data.path`` is the folder holding
  ``train-images-idx3-ubyte`` and ``t10k-images-idx3-ubyte`` (with their ``-labels-idx1-`` files),
  or a single images file.
- ``cifar10``: the python version of CIFAR-10, a folder with ``data_batch_1..5`` and
  ``test_batch`` (or one batch file). Read with a restricted unpickler: only arrays, lists and
  plain values, never arbitrary objects.
- ``npz``: downsampled ImageNet (``train_data_batch_*.npz`` and ``val_data.npz``, ``data`` rows in
  CIFAR's channel-major layout, ``labels`` 1-based), a folder or one file.
- ``folder``: PNG/JPEG files; when they lie in sub-folders, the sorted sub-folder names are the
  classes.

A format's own test split (IDX t10k, CIFAR test_batch, ImageNet val) is the test split;
validation images are a fixed random ``valid_fraction`` of the training images, and without a
test split a further ``test_fraction`` is held out. Training draws whole random images
(:class:`RandomImages`, resumable through its generator state); evaluation uses every image of
a split once.
"""

from __future__ import annotations

import gzip
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from maskdiff.data.splits import Splits
from maskdiff.errors import MaskdiffError, plural
from maskdiff.tokenizer import PixelTokenizer

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_HINT = "install Fashion-MNIST with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu) or set data.path"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SPLIT_SEED = 0  # the valid/test hold-out is the same for every run on the same data


@dataclass
class Images:
    """A set of images and their optional class labels."""

    pixels: np.ndarray  # uint8 [N, H, W, C]
    labels: np.ndarray | None = None  # int64 [N]

    def __len__(self) -> int:
        return self.pixels.shape[0]

    def subset(self, index: np.ndarray) -> Images:
        return Images(self.pixels[index], None if self.labels is None else self.labels[index])


# ------------------------------------------------------------------ tokens
def images_to_tokens(pixels: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, C] -> LongTensor [N, H*W*C] in raster order, channels innermost."""
    return torch.from_numpy(np.ascontiguousarray(pixels).reshape(pixels.shape[0], -1).astype(np.int64))


def tokens_to_images(tokens: torch.Tensor, image_size: int, channels: int) -> np.ndarray:
    """LongTensor [N, H*W*C] with values in 0..255 -> uint8 [N, H, W, C]."""
    return tokens.detach().cpu().numpy().astype(np.uint8).reshape(tokens.shape[0], image_size, image_size, channels)


def _channel_major_rows(data: np.ndarray, name: str, image_size: int, channels: int) -> np.ndarray:
    """Rows of C*H*W bytes (CIFAR / downsampled-ImageNet layout: all of R, then G, then B) -> [N, H, W, C]."""
    expected = channels * image_size * image_size
    if data.ndim != 2 or data.shape[1] != expected:
        got = "x".join(map(str, data.shape[1:]))
        raise MaskdiffError(
            f"{name}: rows of {got} values do not fit {image_size}x{image_size} images with {plural(channels, 'channel')} "
            f"({expected} values); check data.image_size and data.channels"
        )
    return data.reshape(-1, channels, image_size, image_size).transpose(0, 2, 3, 1)


# ------------------------------------------------------------------ IDX
IDX_TYPES = {0x08: np.uint8}


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (``.gz`` or plain) as an array; only the unsigned-byte type MNIST uses."""
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (EOFError, gzip.BadGzipFile, OSError) as err:
        raise MaskdiffError(f"cannot read IDX file {str(path)!r}: {err}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise MaskdiffError(f"{str(path)!r} is not an IDX file (bad magic number)")
    if raw[2] not in IDX_TYPES:
        raise MaskdiffError(f"{str(path)!r}: IDX element type 0x{raw[2]:02x} is not supported (only unsigned bytes)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise MaskdiffError(f"IDX file {str(path)!r} is truncated (incomplete header)")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    size = int(np.prod(shape))
    if len(raw) - header < size:
        raise MaskdiffError(f"IDX file {str(path)!r} is truncated: {len(raw) - header} of {size} data bytes")
    return np.frombuffer(raw, dtype=np.uint8, count=size, offset=header).reshape(shape)


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _idx_set(images_file: Path, labels_file: Path | None) -> Images:
    pixels = read_idx(images_file)
    if pixels.ndim == 3:
        pixels = pixels[..., None]
    if pixels.ndim != 4:
        raise MaskdiffError(f"{str(images_file)!r} holds a {pixels.ndim}-dimensional array, not images")
    labels = None
    if labels_file is not None:
        labels = read_idx(labels_file).astype(np.int64)
        if labels.shape != (pixels.shape[0],):
            raise MaskdiffError(f"{str(labels_file)!r} has {labels.size} labels for {pixels.shape[0]} images")
    return Images(pixels, labels)


def load_idx(path: Path) -> tuple[Images, Images | None]:
    """(train, test) from an MNIST-style folder, or (images, None) from one images file."""
    if path.is_file():
        labels = Path(str(path).replace("images-idx3", "labels-idx1"))
        return _idx_set(path, labels if labels != path and labels.is_file() else None), None
    train = _find(path, "train-images-idx3-ubyte")
    if train is None:
        raise MaskdiffError(f"{str(path)!r} holds no train-images-idx3-ubyte[.gz] file")
    test = _find(path, "t10k-images-idx3-ubyte")
    train_set = _idx_set(train, _find(path, "train-labels-idx1-ubyte"))
    test_set = _idx_set(test, _find(path, "t10k-labels-idx1-ubyte")) if test is not None else None
    return train_set, test_set


# ------------------------------------------------------------------ CIFAR-10
class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, bytes, numbers and numpy arrays only (a CIFAR batch), nothing executable."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),  # how protocol-2 pickles store bytes
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_cifar_batch(path: Path, image_size: int, channels: int) -> Images:
    """One CIFAR python batch: a pickled dict with ``data`` [N, 3072] and ``labels``."""
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
    except OSError as err:
        raise MaskdiffError(f"cannot read CIFAR batch {str(path)!r}: {err.strerror}") from None
    except Exception as err:  # a truncated or foreign pickle raises many different types
        raise MaskdiffError(f"{str(path)!r} is not a readable CIFAR python batch (truncated or damaged?): {err}") from None
    if not isinstance(batch, dict) or b"data" not in batch:
        raise MaskdiffError(f"{str(path)!r} is not a CIFAR python batch (no 'data' entry)")
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    pixels = _channel_major_rows(data, str(path), image_size, channels)
    raw_labels = batch.get(b"labels", batch.get(b"fine_labels"))
    labels = np.asarray(raw_labels, dtype=np.int64) if raw_labels is not None else None
    if labels is not None and labels.shape != (len(pixels),):
        raise MaskdiffError(f"{str(path)!r} has {plural(labels.size, 'label')} for {plural(len(pixels), 'image')}")
    return Images(pixels, labels)


def concat(sets: list[Images]) -> Images:
    labels = [s.labels for s in sets if s.labels is not None]
    joined = np.concatenate(labels) if len(labels) == len(sets) else None
    return Images(np.concatenate([s.pixels for s in sets]), joined)


def load_cifar(path: Path, image_size: int, channels: int) -> tuple[Images, Images | None]:
    """(train, test) from a cifar-10-batches-py folder, or (batch, None) from one batch file."""
    if path.is_file():
        return read_cifar_batch(path, image_size, channels), None
    if (path / "cifar-10-batches-py").is_dir():
        path = path / "cifar-10-batches-py"
    train = sorted(path.glob("data_batch_*"))
    if not train:
        raise MaskdiffError(f"{str(path)!r} holds no CIFAR data_batch_* files")
    test = path / "test_batch"
    return (
        concat([read_cifar_batch(p, image_size, channels) for p in train]),
        read_cifar_batch(test, image_size, channels) if test.is_file() else None,
    )


# ------------------------------------------------------------------ downsampled ImageNet
def read_npz(path: Path, image_size: int, channels: int) -> Images:
    """One npz file with ``data`` (rows of C*H*W, or [N, H, W, C]) and optional 1-based ``labels``."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "data" not in archive.files:
                raise MaskdiffError(f"{str(path)!r} has no 'data' array (found: {', '.join(archive.files) or 'nothing'})")
            data = archive["data"]
            labels = archive["labels"] if "labels" in archive.files else None
    except MaskdiffError:
        raise
    except OSError as err:
        raise MaskdiffError(f"cannot read npz file {str(path)!r}: {err}") from None
    except (ValueError, EOFError, zipfile.BadZipFile, KeyError) as err:
        raise MaskdiffError(f"{str(path)!r} is not a readable npz file (truncated or damaged?): {err}") from None
    if data.dtype != np.uint8:
        raise MaskdiffError(f"{str(path)!r}: 'data' holds {data.dtype}, expected uint8 pixels")
    if data.ndim == 4:
        if data.shape[1:] != (image_size, image_size, channels):
            raise MaskdiffError(
                f"{str(path)!r} holds images of shape {'x'.join(map(str, data.shape[1:]))}, expected "
                f"{image_size}x{image_size}x{channels} (data.image_size, data.channels)"
            )
        pixels = data
    else:
        pixels = _channel_major_rows(data, str(path), image_size, channels)
    if labels is not None:
        labels = np.asarray(labels, dtype=np.int64).reshape(-1) - 1  # the downsampled-ImageNet labels are 1..1000
        if labels.shape != (len(pixels),):
            raise MaskdiffError(f"{str(path)!r} has {plural(labels.size, 'label')} for {plural(len(pixels), 'image')}")
    return Images(pixels, labels)


def load_npz(path: Path, image_size: int, channels: int) -> tuple[Images, Images | None]:
    """(train, val) from a downsampled-ImageNet folder, or (images, None) from one npz file."""
    if path.is_file():
        return read_npz(path, image_size, channels), None
    files = sorted(path.glob("*.npz"))
    test = [p for p in files if p.name.startswith(("val", "test"))]
    train = [p for p in files if p not in test]
    if not train:
        raise MaskdiffError(f"{str(path)!r} holds no training .npz files")
    return concat([read_npz(p, image_size, channels) for p in train]), (concat([read_npz(p, image_size, channels) for p in test]) if test else None)


# ------------------------------------------------------------------ PNG / JPEG
def read_image_file(path: str | Path, channels: int | None = None) -> np.ndarray:
    """One PNG/JPEG file as uint8 [H, W, C]; palette images become RGB. Checks ``channels`` when given."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode == "1":
                image = image.convert("L")
            elif image.mode == "P":
                image = image.convert("RGBA" if "transparency" in image.info else "RGB")
            elif image.mode not in ("L", "LA", "RGB", "RGBA"):
                image = image.convert("RGB")
            pixels = np.asarray(image, dtype=np.uint8)
    except FileNotFoundError:
        raise MaskdiffError(f"image file {str(path)!r} does not exist") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise MaskdiffError(f"cannot read image {str(path)!r} (truncated or not an image?): {err}") from None
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if channels is not None and pixels.shape[2] != channels:
        raise MaskdiffError(f"image {str(path)!r} has {plural(pixels.shape[2], 'channel')}, but data.channels is {channels}")
    return pixels


def load_folder(path: Path, channels: int) -> tuple[Images, None]:
    """Every PNG/JPEG under ``path``; labels from sub-folder names when every image is in one."""
    if not path.is_dir():
        raise MaskdiffError(f"data.format=folder needs a folder of PNG/JPEG files, and {str(path)!r} is not one")
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise MaskdiffError(f"{str(path)!r} holds no .png, .jpg or .jpeg files")
    images = [read_image_file(p, channels) for p in files]
    first = images[0].shape
    for p, image in zip(files, images):
        if image.shape != first:
            raise MaskdiffError(
                f"images of mixed sizes in {str(path)!r}: {files[0].name} is {first[1]}x{first[0]}, "
                f"{p.relative_to(path)} is {image.shape[1]}x{image.shape[0]}"
            )
    labels = None
    parents = [p.relative_to(path).parts for p in files]
    if all(len(parts) > 1 for parts in parents):
        classes = sorted({parts[0] for parts in parents})
        labels = np.array([classes.index(parts[0]) for parts in parents], dtype=np.int64)
    return Images(np.stack(images), labels), None


# ------------------------------------------------------------------ assembling the splits
@dataclass
class ImageSplits(Splits):
    """Splits of an image data set: flat token streams (whole images back to back) plus labels.

    The streams hold uint8 (a CIFAR-10 training set is 150 MB, not 1.2 GB as int64); batches
    become int64 as they are drawn (:class:`RandomImages`, :func:`maskdiff.data.splits.chunks`).
    """

    image_size: int = 0
    channels: int = 1
    labels: dict | None = None  # split name -> int64 tensor [N], or None without labels

    @property
    def seq_len(self) -> int:
        return self.image_size * self.image_size * self.channels

    def images(self, name: str) -> torch.Tensor:
        """The images of a split as rows of tokens.  -> [N, H*W*C]"""
        return self.get(name).view(-1, self.seq_len)

    def labels_of(self, name: str) -> torch.Tensor | None:
        return None if self.labels is None else self.labels[name]


# data.format -> reader (path, image_size, channels) -> (train, test or None)
READERS = {
    "idx": lambda path, size, channels: load_idx(path),
    "cifar10": load_cifar,
    "npz": load_npz,
    "folder": lambda path, size, channels: load_folder(path, channels),
}


def load_images(data_cfg) -> tuple[Images, Images | None]:
    """(train, test or None) of an image DataConfig, checked against its image size and channels."""
    if not data_cfg.path:
        raise MaskdiffError(f"data.format={data_cfg.format} needs data.path (a file or folder of images)")
    path = Path(data_cfg.path)
    if not path.exists():
        hint = f"; {FASHION_MNIST_HINT}" if str(path).rstrip("/") == FASHION_MNIST_DIR else ""
        raise MaskdiffError(f"image data {str(path)!r} does not exist{hint}")
    train, test = READERS[data_cfg.format](path, data_cfg.image_size, data_cfg.channels)
    size, channels = data_cfg.image_size, data_cfg.channels
    for part in (train, test):
        if part is None:
            continue
        h, w, c = part.pixels.shape[1:]
        if c != channels:
            raise MaskdiffError(f"the images in {str(path)!r} have {plural(c, 'channel')}, but data.channels is {channels}")
        if (h, w) != (size, size):
            raise MaskdiffError(f"the images in {str(path)!r} are {w}x{h}, but data.image_size is {size}")
    if test is not None and (train.labels is None) != (test.labels is None):
        train, test = Images(train.pixels), Images(test.pixels)  # labels only where every split has them
    return train, test


def split_images(train: Images, test: Images | None, valid_fraction: float, test_fraction: float) -> dict[str, Images]:
    """train / valid / test: a fixed random hold-out of the training images (and of the test images if none)."""
    n = len(train)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED)).numpy()
    n_valid = int(n * valid_fraction)
    n_test = 0 if test is not None else int(n * test_fraction)
    if n_valid < 1 or n_test < 1 and test is None or n - n_valid - n_test < 1:
        raise MaskdiffError(
            f"{plural(n, 'image')} {'is' if n == 1 else 'are'} too few to hold out {valid_fraction:.0%} for validation"
            + ("" if test is not None else f" and {test_fraction:.0%} for testing")
            + " with at least one image each; use more images or larger data fractions"
        )
    parts = {"valid": train.subset(order[:n_valid]), "train": train.subset(np.sort(order[n_valid + n_test :]))}
    parts["test"] = test if test is not None else train.subset(order[n_valid : n_valid + n_test])
    return parts


def prepare_images(data_cfg, tokenizer: PixelTokenizer | None = None) -> tuple[PixelTokenizer, ImageSplits]:
    """Read an image DataConfig: the pixel tokenizer and the train / valid / test splits."""
    if tokenizer is None:
        tokenizer = PixelTokenizer()
    if not isinstance(tokenizer, PixelTokenizer):
        raise MaskdiffError("image data need the pixel tokenizer; this run was trained on text")
    train, test = load_images(data_cfg)
    parts = split_images(train, test, data_cfg.valid_fraction, data_cfg.test_fraction)
    has_labels = all(p.labels is not None for p in parts.values())
    train_tokens, valid_tokens, test_tokens = (
        torch.from_numpy(np.array(parts[name].pixels, copy=True).reshape(-1)) for name in ("train", "valid", "test")
    )
    return tokenizer, ImageSplits(
        train_tokens,
        valid_tokens,
        test_tokens,
        image_size=data_cfg.image_size,
        channels=data_cfg.channels,
        labels={name: torch.from_numpy(p.labels) for name, p in parts.items()} if has_labels else None,
    )


class RandomImages:
    """Endless batches of random whole images [B, L] (with their labels [B] when given); resumable."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None, batch_size: int, seed: int):
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        index = torch.randint(0, self.images.shape[0], (self.batch_size,), generator=self.generator)
        x0 = self.images[index].long()
        return x0 if self.labels is None else (x0, self.labels[index])

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def image_batches(splits: ImageSplits, data_cfg, num_classes: int, batch_size: int, seed: int) -> RandomImages:
    """Training batches of a run: with labels when the model is class-conditional (checked to fit)."""
    labels = None
    if num_classes:
        labels = splits.labels_of("train")
        if labels is None:
            raise MaskdiffError("model.num_classes > 0 needs class labels, and these images have none")
        if labels.min() < 0 or labels.max() >= num_classes:
            raise MaskdiffError(f"the labels run from {int(labels.min())} to {int(labels.max())}; model.num_classes={num_classes} is too small")
    return RandomImages(splits.images("train"), labels, batch_size, seed)
