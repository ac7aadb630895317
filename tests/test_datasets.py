"""Data loaders: IDX files the tests write, a local HTTP server for downloads, the bundled sample.

Nothing here reaches the internet: mirrors are pointed at 127.0.0.1.
"""
import functools
import gzip
import hashlib
import http.server
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from fastcnn import datasets as ds

# ------------------------------------------------------------------ helpers


def idx_bytes(array: np.ndarray) -> bytes:
    codes = {np.dtype("u1"): 0x08, np.dtype("i1"): 0x09, np.dtype("i2"): 0x0B,
             np.dtype("i4"): 0x0C, np.dtype("f4"): 0x0D, np.dtype("f8"): 0x0E}
    code = codes[array.dtype.newbyteorder("=")]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def fake_set(rng, n_train=50, n_test=20):
    """Small MNIST-like arrays and a file table {role: (name, sha256, shape)} describing them."""
    arrays = {"x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
              "y_train": rng.integers(0, 10, n_train, dtype=np.uint8),
              "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
              "y_test": rng.integers(0, 10, n_test, dtype=np.uint8)}
    files = {role: (name, hashlib.sha256(idx_bytes(arrays[role])).hexdigest(), arrays[role].shape)
             for role, (name, _, _) in ds.MNIST.files.items()}
    return arrays, files


def write_set(directory: Path, arrays, files, gz=True):
    directory.mkdir(parents=True, exist_ok=True)
    for role, (name, _, _) in files.items():
        write_idx(directory / (name + ".gz" if gz else name), arrays[role], gz)


def closed_port_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connection refused, at once
    return f"http://127.0.0.1:{port}/"


@pytest.fixture
def http_dir(tmp_path):
    """A directory served over HTTP on 127.0.0.1; yields (directory, base URL)."""
    root = tmp_path / "served"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("FASTCNN_DATA", str(cache))
    monkeypatch.delenv("FASTCNN_NO_DOWNLOAD", raising=False)
    return cache


# ------------------------------------------------------------------ IDX reader

@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("array", [
    np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
    np.array([-5, 7, 100000], dtype=np.int32),
    np.linspace(-1, 1, 6, dtype=np.float32).reshape(3, 2),
    np.array([[1.5, -2.25]], dtype=np.float64),
    np.array([-3, 4], dtype=np.int16),
])
def test_read_idx_round_trip(tmp_path, array, gz):
    out = ds.read_idx(write_idx(tmp_path / "a.idx", array, gz))
    assert out.shape == array.shape and out.dtype == array.dtype
    np.testing.assert_array_equal(out, array)
    out[...] = 0  # a writable, native-order copy


def test_read_idx_wrong_magic(tmp_path):
    p = tmp_path / "bad"
    p.write_bytes(b"\x12\x34\x08\x01" + b"\0\0\0\x02" + b"ab")
    with pytest.raises(ds.IDXFormatError, match="wrong magic number 0x12340801"):
        ds.read_idx(p)
    p.write_bytes(b"\0\0\x07\x01\0\0\0\x01x")  # unknown type code
    with pytest.raises(ds.IDXFormatError, match="magic"):
        ds.read_idx(p)


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_truncated_data(tmp_path, gz):
    data = idx_bytes(np.zeros((10, 28, 28), np.uint8) + 7)[:-100]
    p = tmp_path / "t"
    p.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(ds.IDXFormatError, match=r"truncated: shape \(10, 28, 28\)"):
        ds.read_idx(p)


def test_read_idx_truncated_header_and_too_short(tmp_path):
    p = tmp_path / "t"
    p.write_bytes(b"\0\0\x08\x03\0\0\0\x0a")  # 3 dims announced, 1 given
    with pytest.raises(ds.IDXFormatError, match="truncated header"):
        ds.read_idx(p)
    p.write_bytes(b"\0\0")
    with pytest.raises(ds.IDXFormatError, match="too short"):
        ds.read_idx(p)


def test_read_idx_trailing_bytes(tmp_path):
    p = tmp_path / "t"
    p.write_bytes(idx_bytes(np.ones(5, np.uint8)) + b"xyz")
    with pytest.raises(ds.IDXFormatError, match="3 unexpected bytes"):
        ds.read_idx(p)


def test_read_idx_truncated_and_corrupt_gzip(tmp_path):
    packed = gzip.compress(idx_bytes(np.arange(5000, dtype=np.int32)))
    p = tmp_path / "t.gz"
    p.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(ds.IDXFormatError, match="gzip stream is truncated"):
        ds.read_idx(p)
    corrupt = bytearray(packed)
    corrupt[len(corrupt) // 2: len(corrupt) // 2 + 8] = b"\xff" * 8
    p.write_bytes(bytes(corrupt))
    with pytest.raises(ds.IDXFormatError, match="corrupt gzip|truncated"):
        ds.read_idx(p)


# ------------------------------------------------------------------ MNIST-style loaders

@pytest.mark.parametrize("gz", [True, False])
def test_load_from_path(tmp_path, monkeypatch, gz):
    arrays, files = fake_set(np.random.default_rng(1))
    monkeypatch.setattr(ds.MNIST, "files", files)
    write_set(tmp_path / "m", arrays, files, gz=gz)
    (xtr, ytr), (xte, yte) = ds.load_mnist(tmp_path / "m", download=False)
    np.testing.assert_array_equal(xtr, arrays["x_train"])
    np.testing.assert_array_equal(ytr, arrays["y_train"])
    np.testing.assert_array_equal(xte, arrays["x_test"])
    np.testing.assert_array_equal(yte, arrays["y_test"])
    assert xtr.dtype == np.uint8 and xtr.shape == (50, 28, 28)


def test_load_from_cache_dir(isolated_cache, monkeypatch):
    arrays, files = fake_set(np.random.default_rng(2))
    monkeypatch.setattr(ds.MNIST, "files", files)
    write_set(isolated_cache / "mnist", arrays, files)
    (xtr, _), _ = ds.load_mnist(download=False)
    np.testing.assert_array_equal(xtr, arrays["x_train"])


def test_wrong_checksum_is_refused(tmp_path, monkeypatch):
    arrays, files = fake_set(np.random.default_rng(3))
    monkeypatch.setattr(ds.MNIST, "files", files)
    arrays["y_test"] = (arrays["y_test"] + 1) % 10  # same shape, other content
    write_set(tmp_path, arrays, files)
    with pytest.raises(ds.ChecksumMismatch, match="t10k-labels-idx1-ubyte.gz: SHA-256"):
        ds.load_mnist(tmp_path, download=False)


def test_real_digests_refuse_fashion_files_as_mnist(tmp_path):
    # The real MNIST digests are in force: a valid IDX file of another data set fails.
    name, _, shape = ds.MNIST.files["y_test"]
    write_idx(tmp_path / (name + ".gz"), np.zeros(shape, np.uint8), gz=True)
    with pytest.raises(ds.ChecksumMismatch):
        ds.load_mnist(tmp_path, download=False)


def test_missing_data_message(tmp_path, monkeypatch):
    with pytest.raises(ds.DataNotFound) as info:
        ds.load_mnist(tmp_path / "nowhere", download=False)
    msg = str(info.value)
    for name, _, _ in ds.MNIST.files.values():
        assert name + ".gz" in msg
    assert str(tmp_path / "nowhere") in msg
    assert "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz" in msg
    assert "storage.googleapis.com/cvdf-datasets/mnist/" in msg
    monkeypatch.setenv("FASTCNN_NO_DOWNLOAD", "1")
    with pytest.raises(ds.DataNotFound, match="FASTCNN_NO_DOWNLOAD") as info:
        ds.load_fashion_mnist(tmp_path / "nowhere")
    assert "/usr/share/datasets" not in str(info.value)  # an explicit path is the only place looked in
    monkeypatch.setenv("FASTCNN_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(ds.FASHION_MNIST, "system_dirs", (tmp_path / "no-debian",))
    with pytest.raises(ds.DataNotFound) as info:
        ds.load_fashion_mnist()
    msg = str(info.value)
    assert str(tmp_path / "cache" / "fashion-mnist") in msg and str(tmp_path / "no-debian") in msg
    assert "apt-get install dataset-fashion-mnist" in msg


def test_download_from_local_server(http_dir, isolated_cache, monkeypatch):
    served, url = http_dir
    arrays, files = fake_set(np.random.default_rng(4))
    write_set(served, arrays, files)
    monkeypatch.setattr(ds.MNIST, "files", files)
    monkeypatch.setattr(ds.MNIST, "mirrors", [closed_port_url(), url])  # first mirror down
    (xtr, ytr), (xte, yte) = ds.load_mnist()
    np.testing.assert_array_equal(xte, arrays["x_test"])
    np.testing.assert_array_equal(ytr, arrays["y_train"])
    target = isolated_cache / "mnist"
    assert sorted(p.name for p in target.iterdir()) == sorted(n + ".gz" for n, _, _ in files.values())
    # Second call reads the cache: with the server's files gone it still works.
    for p in served.iterdir():
        p.unlink()
    (xtr2, _), _ = ds.load_mnist()
    np.testing.assert_array_equal(xtr2, xtr)


def test_download_checksum_mismatch_keeps_nothing(http_dir, tmp_path, monkeypatch):
    served, url = http_dir
    arrays, files = fake_set(np.random.default_rng(5))
    bad = dict(arrays, x_train=arrays["x_train"] ^ 1)
    write_set(served, bad, files)
    monkeypatch.setattr(ds.MNIST, "files", files)
    monkeypatch.setattr(ds.MNIST, "mirrors", [url])
    monkeypatch.delenv("FASTCNN_NO_DOWNLOAD", raising=False)
    target = tmp_path / "dl"
    with pytest.raises(ds.DataNotFound) as info:
        ds.load_mnist(target)
    msg = str(info.value)
    assert "train-images-idx3-ubyte.gz" in msg and "SHA-256" in msg and "was not kept" in msg
    assert "train-labels-idx1-ubyte" not in msg.split("Download failed")[0]  # the others arrived
    assert sorted(p.name for p in target.iterdir()) == sorted(
        n + ".gz" for r, (n, _, _) in files.items() if r != "x_train")  # no partial, no bad file


def test_download_network_failure_message(tmp_path, monkeypatch):
    monkeypatch.setattr(ds.MNIST, "mirrors", [closed_port_url()])
    monkeypatch.delenv("FASTCNN_NO_DOWNLOAD", raising=False)
    with pytest.raises(ds.DataNotFound) as info:
        ds.load_mnist(tmp_path / "x")
    msg = str(info.value)
    assert "Download failed" in msg and "refused" in msg.lower()
    assert str(tmp_path / "x") in msg
    assert list((tmp_path / "x").iterdir()) == []


def test_cache_dir_conventions(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTCNN_DATA", str(tmp_path / "d"))
    assert ds.cache_dir("mnist") == tmp_path / "d" / "mnist"
    monkeypatch.delenv("FASTCNN_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert ds.cache_dir("mnist") == tmp_path / "xdg" / "fastcnn" / "mnist"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert ds.cache_dir() == tmp_path / "home" / ".cache" / "fastcnn"


DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not (DEBIAN_FASHION / "train-images-idx3-ubyte.gz").is_file(),
                    reason="Debian package dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_debian(isolated_cache):
    (xtr, ytr), (xte, yte) = ds.load_fashion_mnist(download=False)
    assert xtr.shape == (60000, 28, 28) and xte.shape == (10000, 28, 28)
    assert xtr.dtype == np.uint8 and ytr.dtype == np.uint8
    assert np.bincount(ytr).tolist() == [6000] * 10 and np.bincount(yte).tolist() == [1000] * 10
    assert ytr[:5].tolist() == [9, 0, 0, 3, 0]  # the first training labels of Fashion-MNIST
    assert not isolated_cache.exists()  # read in place, nothing copied


# ------------------------------------------------------------------ sample, synthetic, helpers

def test_mnist_sample_split():
    (xtr, ytr), (xva, yva) = ds.load_mnist_sample()
    assert xtr.shape == (8000, 28, 28) and xva.shape == (2000, 28, 28)
    assert xtr.dtype == np.uint8 and ytr.dtype == np.uint8
    assert set(np.unique(yva)) == set(range(10)) and set(np.unique(ytr)) == set(range(10))
    assert 0 < xtr.mean() < 255
    (xtr2, _), (xva2, _) = ds.load_mnist_sample()
    np.testing.assert_array_equal(xva, xva2)  # fixed seed: the same split every time
    total = np.bincount(np.concatenate([ytr, yva]))
    assert total.tolist() == [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]
    (_, _), (xva3, _) = ds.load_mnist_sample(seed=1)
    assert not np.array_equal(xva, xva3)
    (xtr4, _), (xva4, _) = ds.load_mnist_sample(validation=0)
    assert len(xtr4) == 10000 and len(xva4) == 0
    with pytest.raises(ValueError, match="validation"):
        ds.load_mnist_sample(validation=10001)


def test_synthetic():
    x, y = ds.synthetic(7, shape=(227, 227, 3), num_classes=1000, seed=3)
    assert x.shape == (7, 227, 227, 3) and x.dtype == np.uint8
    assert y.shape == (7,) and 0 <= y.min() and y.max() < 1000
    x2, y2 = ds.synthetic(7, shape=(227, 227, 3), num_classes=1000, seed=3)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    assert "SYNTHETIC" in ds.synthetic.__doc__


def test_to_categorical():
    out = ds.to_categorical([2, 0, 1])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.eye(3, dtype=np.float32)[[2, 0, 1]])
    assert ds.to_categorical(np.array([[1], [3]], np.uint8), 5).shape == (2, 5)
    with pytest.raises(ValueError, match="outside"):
        ds.to_categorical([0, 10], num_classes=10)
    with pytest.raises(ValueError, match="integers"):
        ds.to_categorical([0.5])


def test_prepare_images():
    x = np.array([[[0, 255], [51, 102]]], np.uint8)
    out = ds.prepare_images(x)
    assert out.shape == (1, 2, 2, 1) and out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_allclose(out[0, :, :, 0], [[0, 1], [0.2, 0.4]], rtol=1e-6)
    f = np.random.default_rng(0).random((2, 3, 3, 3))
    np.testing.assert_allclose(ds.prepare_images(f), f.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        ds.prepare_images(np.zeros((3, 3)))
