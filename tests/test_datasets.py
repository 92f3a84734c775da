"""Tests of repanalysis.datasets: digits, MNIST (IDX, checksums, downloads), the toy problems."""

import contextlib
import functools
import gzip
import hashlib
import http.server
import shutil
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.optimize import linprog
from scipy.stats import chi2
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.svm import SVC, SVR

from repanalysis.datasets import DATASETS, Dataset, idx, load, mnist, toy
from repanalysis.datasets.sampling import random_subset, stratified_subset
from repanalysis.errors import UserError

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "datasets"
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
needs_shared_mnist = pytest.mark.skipif(
    not (SHARED_MNIST / "mnist").is_dir(), reason=f"MNIST files not found in {SHARED_MNIST / 'mnist'}"
)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def isolated_environment(monkeypatch, tmp_path):
    """No test reads the user's data folders or reaches a real mirror."""
    monkeypatch.delenv("REPANALYSIS_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("REPANALYSIS_MNIST_MIRRORS", f"http://127.0.0.1:{closed_port()}/")


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve(directory: Path):
    """Serve ``directory`` over HTTP on 127.0.0.1; yield the base URL."""
    handler = functools.partial(QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def idx_bytes(array: np.ndarray, code: int) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def gunzipped_sha256(path: Path) -> str:
    return hashlib.sha256(gzip.decompress(path.read_bytes())).hexdigest()


def gunzip_shared(name: str) -> bytes:
    return gzip.decompress((SHARED_MNIST / "mnist" / f"{name}.gz").read_bytes())


# --- registry --------------------------------------------------------------


def test_names_are_digits_mnist_and_the_eight_toys():
    problems = ("regression", "classification")
    toys = {f"{k}-{p}-{d}d" for k in ("linear", "nonlinear") for p in problems for d in (2, 100)}
    assert DATASETS[:2] == ("digits", "mnist")
    assert set(DATASETS[2:]) == toys and len(DATASETS) == 10


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(UserError, match="unknown data set 'cifar'") as err:
        load("cifar")
    assert all(name in str(err.value) for name in DATASETS)
    assert "\n" not in str(err.value)


def test_dataset_rejects_wrong_label_type():
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError):
        Dataset("bad", "classification", x, torch.zeros(3), x, torch.zeros(3), 2, "none")


# --- subsets -------------------------------------------------------------


def test_stratified_subset_deals_quotas_round_robin():
    labels = np.array([2] * 10 + [0] * 2 + [1] * 10)
    for size, quotas in [(7, [2, 3, 2]), (12, [2, 5, 5]), (22, [2, 10, 10]), (1, [1, 0, 0])]:
        chosen = stratified_subset(labels, size)
        assert np.bincount(labels[chosen], minlength=3).tolist() == quotas
        assert chosen.dtype == np.int64 and np.all(np.diff(chosen) > 0)


def test_subsets_are_nested_and_fixed():
    labels = np.random.default_rng(5).integers(0, 4, 300)
    small, large = stratified_subset(labels, 40), stratified_subset(labels, 120)
    assert set(small) <= set(large)
    assert np.array_equal(small, stratified_subset(labels, 40))
    assert set(random_subset(300, 40)) <= set(random_subset(300, 120))
    assert not np.array_equal(random_subset(300, 40, seed=0), random_subset(300, 40, seed=1))


# --- digits --------------------------------------------------------------


def test_digits_shapes_dtypes_and_range():
    ds = load("digits")
    assert (ds.name, ds.task, ds.n_outputs, ds.n_features) == ("digits", "classification", 10, 64)
    assert ds.x_train.shape == (1437, 64) and ds.x_test.shape == (360, 64)
    assert ds.y_train.shape == (1437,) and ds.y_test.shape == (360,)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    x = torch.cat([ds.x_train, ds.x_test])
    assert x.min() == 0 and x.max() == 1
    assert torch.equal(x * 16, (x * 16).round())
    assert torch.bincount(ds.y_test).tolist() == [36] * 10


def test_digits_split_is_fixed_across_calls_and_seeds():
    a, b = load("digits", seed=0), load("digits", seed=123)
    for name in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(a, name), getattr(b, name))


def test_digits_probe_index_is_stratified_sorted_and_deterministic():
    ds = load("digits")
    torch.manual_seed(1)
    np.random.seed(1)
    index = ds.probe_index(100)
    torch.manual_seed(2)
    np.random.seed(2)
    assert np.array_equal(index, load("digits", seed=7).probe_index(100))
    assert index.dtype == np.int64 and index.shape == (100,)
    assert np.all(np.diff(index) > 0) and index[0] >= 0 and index[-1] < 360
    labels = ds.probe_labels(index)
    assert labels.dtype == np.int64 and np.array_equal(labels, ds.y_test.numpy()[index])
    assert np.bincount(labels).tolist() == [10] * 10
    assert np.bincount(ds.probe_labels(ds.probe_index(25)), minlength=10).tolist() == [3] * 5 + [2] * 5
    assert np.array_equal(ds.probe_index(360), np.arange(360))


@pytest.mark.parametrize("size", [0, -3, 361])
def test_probe_size_outside_the_test_split_is_a_user_error(size):
    with pytest.raises(UserError, match="360"):
        load("digits").probe_index(size)


# --- IDX -----------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True])
def test_idx_reads_raw_and_gzipped_files(tmp_path, compress):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    ints = np.array([-5, 70000, 3], dtype=np.int32)
    for name, array, code in [("images", images, 0x08), ("ints", ints, 0x0C)]:
        data = idx_bytes(array, code)
        (tmp_path / name).write_bytes(gzip.compress(data) if compress else data)
        read = idx.read(tmp_path / name)
        assert read.dtype == array.dtype and np.array_equal(read, array)


@pytest.mark.parametrize(
    "data, message",
    [
        (idx_bytes(np.zeros((4, 5), np.uint8), 0x08)[:-1], "truncated"),
        (idx_bytes(np.zeros((4, 5), np.uint8), 0x08)[:9], "truncated"),
        (idx_bytes(np.zeros((4, 5), np.uint8), 0x08) + b"\0", "too long"),
        (b"\0\0", "truncated"),
        (b"\x01\x02\x08\x01" + bytes(8), "not an IDX file"),
        (b"\0\0\x07\x01" + bytes(8), "not an IDX file"),
    ],
)
def test_idx_rejects_malformed_bytes(data, message):
    with pytest.raises(UserError, match=message):
        idx.parse(data, "some-file")


def test_idx_rejects_truncated_gzip(tmp_path):
    path = tmp_path / "labels.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.arange(100, dtype=np.uint8), 0x08))[:-10])
    with pytest.raises(UserError, match="truncated or corrupt gzip"):
        idx.read(path)


# --- MNIST from files ------------------------------------------------------


@needs_shared_mnist
def test_mnist_from_the_shared_folder():
    ds = load("mnist", data_dir=SHARED_MNIST, download=False)
    assert (ds.task, ds.n_outputs, ds.n_features) == ("classification", 10, 784)
    assert ds.x_train.shape == (60000, 784) and ds.x_test.shape == (10000, 784)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert torch.bincount(ds.y_train).tolist() == MNIST_TRAIN_COUNTS
    assert torch.bincount(ds.y_test).tolist() == MNIST_TEST_COUNTS
    assert ds.x_train.min() == 0 and ds.x_train.max() == 1 and ds.x_test.max() == 1
    assert torch.equal(ds.x_test * 255, (ds.x_test * 255).round())
    assert np.bincount(ds.probe_labels(ds.probe_index(1000))).tolist() == [100] * 10


@needs_shared_mnist
def test_mnist_corrupt_file_is_named(tmp_path):
    for gz in (SHARED_MNIST / "mnist").iterdir():
        if gz.name != "train-labels-idx1-ubyte.gz":
            shutil.copy(gz, tmp_path)
    corrupt = bytearray(gunzip_shared("train-labels-idx1-ubyte"))
    corrupt[1000] ^= 1
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(corrupt)
    with pytest.raises(UserError, match=r"train-labels-idx1-ubyte at .*tmp.* is corrupt") as err:
        load("mnist", data_dir=tmp_path, download=False)
    assert str(tmp_path / "train-labels-idx1-ubyte") in str(err.value)


def test_mnist_missing_files_without_download(tmp_path, monkeypatch):
    monkeypatch.setenv("REPANALYSIS_DATA", str(tmp_path))
    with pytest.raises(UserError, match="train-images-idx3-ubyte .*not found in .*mnist") as err:
        load("mnist", download=False)
    assert "--data-dir" in str(err.value)


def test_a_given_data_dir_is_only_read(tmp_path, monkeypatch):
    monkeypatch.setenv("REPANALYSIS_MNIST_MIRRORS", "http://127.0.0.1:9/")  # a download would fail loudly
    with pytest.raises(UserError, match="is in neither") as err:
        load("mnist", data_dir=tmp_path)
    assert "pass --data-dir" not in str(err.value) and "download" in str(err.value)
    assert list(tmp_path.iterdir()) == []  # no mnist/ folder made


def test_data_root_prefers_argument_then_environment_then_cache(monkeypatch, tmp_path):
    assert mnist.data_root() == tmp_path / "cache" / "repanalysis"
    monkeypatch.setenv("REPANALYSIS_DATA", str(tmp_path / "env"))
    assert mnist.data_root() == tmp_path / "env"
    assert mnist.data_root(tmp_path / "arg") == tmp_path / "arg"


def test_mnist_dir_is_the_root_only_when_it_holds_the_files(tmp_path):
    assert mnist.mnist_dir(tmp_path) == tmp_path / "mnist"
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"")
    assert mnist.mnist_dir(tmp_path) == tmp_path


def test_mirrors_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("REPANALYSIS_MNIST_MIRRORS", " http://a/x/ ,http://b/,")
    assert mnist.mirrors() == ["http://a/x/", "http://b/"]
    monkeypatch.delenv("REPANALYSIS_MNIST_MIRRORS")
    assert mnist.mirrors() == list(mnist.MIRRORS)


# --- MNIST downloads -------------------------------------------------------


@needs_shared_mnist
def test_mnist_downloads_missing_files(monkeypatch, tmp_path):
    data_dir = tmp_path / "data"
    with serve(SHARED_MNIST / "mnist") as url:
        monkeypatch.setenv("REPANALYSIS_MNIST_MIRRORS", url)
        monkeypatch.setenv("REPANALYSIS_DATA", str(data_dir))
        ds = load("mnist")
    assert ds.x_train.shape == (60000, 784) and len(ds.y_test) == 10000
    files = sorted(p.name for p in data_dir.rglob("*"))
    assert files == sorted(["mnist", *(f"{name}.gz" for name in mnist.SHA256)])
    for name, digest in mnist.SHA256.items():
        assert gunzipped_sha256(data_dir / "mnist" / f"{name}.gz") == digest


@needs_shared_mnist
def test_download_skips_a_mirror_with_a_wrong_file(monkeypatch, tmp_path):
    name = "t10k-labels-idx1-ubyte"
    bad = tmp_path / "bad"
    bad.mkdir()
    corrupt = bytearray(gunzip_shared(name))
    corrupt[-1] ^= 1
    (bad / f"{name}.gz").write_bytes(gzip.compress(bytes(corrupt)))
    with serve(bad) as bad_url, serve(SHARED_MNIST / "mnist") as good_url:
        monkeypatch.setenv("REPANALYSIS_MNIST_MIRRORS", f"{bad_url},{good_url}")
        path = mnist.fetch_file(name, tmp_path / "out")
    assert path == tmp_path / "out" / f"{name}.gz"
    assert [p.name for p in (tmp_path / "out").iterdir()] == [f"{name}.gz"]
    assert gunzipped_sha256(path) == mnist.SHA256[name]


@pytest.mark.parametrize("served", ["truncated", "missing"])
def test_download_of_a_bad_file_leaves_nothing(monkeypatch, tmp_path, served):
    name = "train-images-idx3-ubyte"
    site = tmp_path / "site"
    site.mkdir()
    if served == "truncated":
        whole = gzip.compress(idx_bytes(np.zeros((10, 28, 28), np.uint8), 0x08))
        (site / f"{name}.gz").write_bytes(whole[: len(whole) // 2])
    data_dir = tmp_path / "data"
    with serve(site) as url:
        monkeypatch.setenv("REPANALYSIS_MNIST_MIRRORS", url)
        monkeypatch.setenv("REPANALYSIS_DATA", str(data_dir))
        with pytest.raises(UserError, match=f"could not download MNIST file {name}") as err:
            load("mnist")
    assert ("gzip" if served == "truncated" else "404") in str(err.value)
    assert "\n" not in str(err.value)
    assert list((data_dir / "mnist").iterdir()) == []


def test_unreachable_mirror_gives_one_line_offline_error(tmp_path, monkeypatch):
    monkeypatch.setenv("REPANALYSIS_DATA", str(tmp_path))
    with pytest.raises(UserError) as err:
        load("mnist")
    message = str(err.value)
    assert message.startswith("could not download MNIST file train-images-idx3-ubyte from any mirror")
    assert "last error" in message and "REPANALYSIS_DATA" in message and "--data-dir" in message
    assert "\n" not in message
    assert list((tmp_path / "mnist").iterdir()) == []


# --- toy problems ----------------------------------------------------------


def as_numpy(ds):
    return ds.x_train.numpy(), ds.y_train.numpy()[:, 0], ds.x_test.numpy(), ds.y_test.numpy()[:, 0]


@pytest.mark.parametrize("name", toy.NAMES)
def test_toy_shapes_and_determinism(name):
    ds = load(name, seed=3)
    d = 2 if name.endswith("-2d") else 100
    assert ds.task == ("regression" if "regression" in name else "binary")
    assert (ds.n_outputs, ds.n_features) == (1, d)
    assert ds.x_train.shape == (1000, d) and ds.x_test.shape == (500, d)
    assert ds.y_train.shape == (1000, 1) and ds.y_test.shape == (500, 1)
    assert ds.x_train.dtype == ds.y_train.dtype == torch.float32
    again, other = load(name, seed=3), load(name, seed=4)
    assert torch.equal(ds.x_train, again.x_train) and torch.equal(ds.y_test, again.y_test)
    assert not torch.equal(ds.x_train, other.x_train)
    assert abs(float(ds.x_train.mean())) < 0.1 and abs(float(ds.x_train.std()) - 1) < 0.1
    if ds.task == "binary":
        assert set(torch.unique(ds.y_train).tolist()) == {0.0, 1.0}
        assert 0.2 < float(ds.y_train.mean()) < 0.8
        assert np.bincount(ds.probe_labels(ds.probe_index(100))).tolist() == [50, 50]
    else:
        assert ds.probe_labels(ds.probe_index(100)) is None


def test_toy_problems_differ_from_each_other():
    a, b = load("linear-regression-2d"), load("nonlinear-regression-2d")
    assert not torch.equal(a.x_train, b.x_train)


def test_toy_negative_seed_is_a_user_error():
    with pytest.raises(UserError, match="non-negative"):
        load("linear-regression-2d", seed=-1)


@pytest.mark.parametrize("d", [2, 100])
def test_linear_regression_is_fit_by_least_squares_up_to_the_noise(d):
    x, y, x_test, y_test = as_numpy(load(f"linear-regression-{d}d"))
    model = LinearRegression().fit(x, y)
    residual = y_test - model.predict(x_test)
    assert 0.08 < residual.std() < 0.12
    assert model.score(x_test, y_test) > 0.98


@pytest.mark.parametrize("d", [2, 100])
def test_linear_classification_is_linearly_separable(d):
    x, y, x_test, y_test = as_numpy(load(f"linear-classification-{d}d"))
    # feasible iff some (w, b) has sign * (x·w + b) >= 1 for every training point
    sign = 2 * y - 1
    constraints = -sign[:, None] * np.hstack([x, np.ones((len(x), 1))])
    result = linprog(np.zeros(d + 1), A_ub=constraints, b_ub=-np.ones(len(x)), bounds=(None, None))
    assert result.status == 0
    assert LogisticRegression(C=100).fit(x, y).score(x_test, y_test) > 0.9


@pytest.mark.parametrize("d", [2, 100])
def test_nonlinear_classification_defeats_a_linear_classifier(d):
    x, y, x_test, y_test = as_numpy(load(f"nonlinear-classification-{d}d"))
    linear = LogisticRegression().fit(x, y).score(x_test, y_test)
    kernel = SVC().fit(x, y).score(x_test, y_test)
    assert linear < 0.65 and kernel > 0.85
    outside = np.linalg.norm(x, axis=1) - np.sqrt(chi2.median(d))
    assert np.array_equal(y, outside > 0)
    assert np.abs(outside).min() >= 0.1 - 1e-5  # the documented margin


@pytest.mark.parametrize("d", [2, 100])
def test_nonlinear_regression_defeats_a_linear_model(d):
    x, y, x_test, y_test = as_numpy(load(f"nonlinear-regression-{d}d"))
    linear = LinearRegression().fit(x, y).score(x_test, y_test)
    kernel = SVR().fit(x, y).score(x_test, y_test)
    assert linear < 0.1 and kernel > 0.8
