"""Tests for alexnet_cifar.data: download, prepare, load_npz."""
from __future__ import annotations

import io
import os
import pickle
import shutil
import socket
import tarfile
import uuid

import numpy as np
import pytest
from cifar_archive import (
    BATCH_DIR,
    batch_pickle,
    build_archive,
    chardev,
    evil_pickle,
    fifo,
    hardlink,
    regular,
    source_arrays,
    symlink,
)

from alexnet_cifar import data
from alexnet_cifar.data import DataError, download, file_md5, load_npz, prepare

WRONG_MD5 = "0" * 32


def served(server, archive) -> str:
    """Copy ``archive`` into the server's root under a fresh name; return that name."""
    name = f"{uuid.uuid4().hex}.tar.gz"
    shutil.copy(archive, server.root / name)
    return name


def assert_only(folder, *names) -> None:
    """``folder`` holds exactly ``names``: no temp files left behind."""
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)


# ------------------------------------------------------------------------------------------ download

def test_download_http(tiny_archive, http_server, tmp_path):
    path, md5 = tiny_archive
    messages = []
    dest = download(http_server.url(served(http_server, path)), tmp_path / "a.tar.gz", md5, log=messages.append)
    assert dest == tmp_path / "a.tar.gz"
    assert dest.read_bytes() == path.read_bytes() and file_md5(dest) == md5
    assert_only(tmp_path, "a.tar.gz")
    assert any("attempt 1/4" in m for m in messages)


@pytest.mark.parametrize("as_url", [True, False], ids=["file-url", "plain-path"])
def test_download_local(tiny_archive, tmp_path, as_url):
    path, md5 = tiny_archive
    dest = download(path.as_uri() if as_url else str(path), tmp_path / "sub" / "a.tar.gz", md5)
    assert file_md5(dest) == md5
    assert_only(tmp_path / "sub", "a.tar.gz")


def test_download_missing_local_file(tmp_path):
    with pytest.raises(DataError, match="nowhere.tar.gz"):
        download(str(tmp_path / "nowhere.tar.gz"), tmp_path / "a.tar.gz", WRONG_MD5)
    assert_only(tmp_path)


@pytest.mark.parametrize("over_http", [True, False], ids=["http", "local"])
def test_download_wrong_md5(tiny_archive, http_server, tmp_path, over_http):
    path, md5 = tiny_archive
    url = http_server.url(served(http_server, path)) if over_http else str(path)
    with pytest.raises(DataError) as err:
        download(url, tmp_path / "a.tar.gz", WRONG_MD5)
    message = str(err.value)
    assert WRONG_MD5 in message and md5 in message and url in message and "dataset.md5" in message
    assert "HTML" not in message
    assert_only(tmp_path)


def test_download_404_fails_at_once(http_server, tmp_path, monkeypatch):
    before = http_server.hits["/status/404"]
    sleeps = []
    monkeypatch.setattr(data.time, "sleep", sleeps.append)
    with pytest.raises(DataError, match="404") as err:
        download(http_server.url("status/404"), tmp_path / "a.tar.gz", WRONG_MD5, retries=3)
    assert sleeps == []  # no backoff before a retry: there is none
    assert http_server.hits["/status/404"] == before + 1
    assert http_server.url("status/404") in str(err.value)
    assert_only(tmp_path)


def test_download_html_page(http_server, tmp_path):
    with pytest.raises(DataError, match="HTML page, not the archive"):
        download(http_server.url("html"), tmp_path / "a.tar.gz", WRONG_MD5)
    assert_only(tmp_path)


def test_download_truncated_body_is_retried_then_fails(tiny_archive, http_server, tmp_path):
    path, md5 = tiny_archive
    name = served(http_server, path)
    messages = []
    with pytest.raises(DataError, match="after 2 attempts"):
        download(http_server.url(f"truncated/{name}"), tmp_path / "a.tar.gz", md5, retries=1, log=messages.append)
    assert http_server.hits[f"/truncated/{name}"] == 2
    assert any("retrying" in m for m in messages)
    assert_only(tmp_path)


def test_download_flaky_server_succeeds_on_retry(tiny_archive, http_server, tmp_path):
    path, md5 = tiny_archive
    name = served(http_server, path)
    dest = download(http_server.url(f"flaky/{name}"), tmp_path / "a.tar.gz", md5, retries=1)
    assert file_md5(dest) == md5
    assert http_server.hits[f"/flaky/{name}"] == 2
    assert_only(tmp_path, "a.tar.gz")


def test_download_flaky_server_without_retries_fails(tiny_archive, http_server, tmp_path):
    path, md5 = tiny_archive
    with pytest.raises(DataError, match="500"):
        download(http_server.url(f"flaky/{served(http_server, path)}"), tmp_path / "a.tar.gz", md5, retries=0)
    assert_only(tmp_path)


def test_download_connection_refused(tmp_path, monkeypatch):
    sleeps = []
    monkeypatch.setattr(data.time, "sleep", sleeps.append)
    # Bound but not listening: a connection is refused, and the port stays ours (no other process
    # can start listening there in between, as it could on a port merely found free).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        with pytest.raises(DataError, match="after 2 attempts") as err:
            download(f"http://127.0.0.1:{s.getsockname()[1]}/x.tar.gz", tmp_path / "a.tar.gz", WRONG_MD5, retries=1)
    assert "refused" in str(err.value).lower()
    assert sleeps == [data._BACKOFF_S]  # one back-off, before the one retry
    assert_only(tmp_path)


def test_download_timeout(tmp_path):
    """A server that accepts the connection and never answers: an error naming the timeout, not
    a hang."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(DataError, match="after 1 attempts") as err:
            download(f"http://127.0.0.1:{s.getsockname()[1]}/x", tmp_path / "a.tar.gz", WRONG_MD5,
                     retries=0, timeout=0.3)
    assert "timed out" in str(err.value)
    assert_only(tmp_path)


@pytest.mark.parametrize("md5", ["", "C58F30108F718F92721AF3B95E74349A", "c58f30108f718f92721af3b95e74349",
                                 "g58f30108f718f92721af3b95e74349a", None])
def test_download_rejects_malformed_md5(tiny_archive, tmp_path, md5):
    with pytest.raises(DataError, match="32 lowercase hex"):
        download(str(tiny_archive[0]), tmp_path / "a.tar.gz", md5)
    assert_only(tmp_path)


def test_download_rejects_unknown_scheme(tmp_path):
    with pytest.raises(DataError, match="ftp"):
        download("ftp://127.0.0.1/x.tar.gz", tmp_path / "a.tar.gz", WRONG_MD5)


def test_download_progress_only_on_a_tty(tiny_archive, tmp_path, monkeypatch, capsys):
    path, md5 = tiny_archive
    download(str(path), tmp_path / "quiet.tar.gz", md5)
    assert capsys.readouterr().err == ""

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stderr", Tty())
    download(str(path), tmp_path / "loud.tar.gz", md5)
    shown = data.sys.stderr.getvalue()
    assert "100%" in shown and "MB" in shown


def test_file_md5_missing(tmp_path):
    with pytest.raises(DataError, match="absent"):
        file_md5(tmp_path / "absent")


# ------------------------------------------------------------------------------------------- prepare

def test_prepare_official_layout(tiny_archive, tmp_path):
    path, _ = tiny_archive
    with tarfile.open(path) as tar:  # the helper really writes Python-2-style pickles
        raw = tar.extractfile(f"{BATCH_DIR}/data_batch_1").read()
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in raw and b"U\x06labels" in raw and b"_codecs" not in raw

    assert prepare(path, tmp_path / "c.npz") == {"train": 30, "test": 12}
    arrays = load_npz(tmp_path / "c.npz")
    src = source_arrays()
    train_x = np.concatenate([x for x, _ in src["train"]])
    assert arrays.train_images.shape == (30, 3, 32, 32) and arrays.train_images.dtype == np.uint8
    assert arrays.test_images.shape == (12, 3, 32, 32) and arrays.test_images.dtype == np.uint8
    assert arrays.train_labels.dtype == np.int64 and arrays.test_labels.dtype == np.int64
    np.testing.assert_array_equal(arrays.train_labels, np.concatenate([y for _, y in src["train"]]))
    np.testing.assert_array_equal(arrays.test_labels, src["test"][0][1])
    assert set(arrays.train_labels) == set(range(10))
    np.testing.assert_array_equal(arrays.train_images.reshape(30, -1), train_x)
    # channel order: row = 1024 red, 1024 green, 1024 blue values, each row-major over (y, x)
    k, y, x = 13, 5, 17
    for channel in range(3):
        assert arrays.train_images[k, channel, y, x] == train_x[k, channel * 1024 + y * 32 + x]


def test_prepare_writes_plain_npz(tiny_archive, tmp_path):
    prepare(tiny_archive[0], tmp_path / "c.npz", limit_train=3, limit_test=2)
    assert_only(tmp_path, "c.npz")  # np.savez would add ".npz" to a name it was given
    assert set(np.load(tmp_path / "c.npz").files) == set(data.Cifar10Arrays._fields)


def test_prepare_uneven_and_empty_batches(tmp_path):
    counts = (0, 3, 1, 10, 2)
    path, _ = build_archive(tmp_path / "a.tar.gz", train_counts=counts, test_count=4, seed=7)
    assert prepare(path, tmp_path / "c.npz") == {"train": 16, "test": 4}
    src = source_arrays(counts, 4, seed=7)
    arrays = load_npz(tmp_path / "c.npz")
    np.testing.assert_array_equal(arrays.train_labels, np.concatenate([y for _, y in src["train"]]))
    np.testing.assert_array_equal(arrays.train_images.reshape(16, -1), np.concatenate([x for x, _ in src["train"]]))


@pytest.mark.parametrize("limit_train, limit_test, expected", [(10, 5, (10, 5)), (1, None, (1, 12)),
                                                                (None, 1000, (30, 12)), (30, 12, (30, 12))])
def test_prepare_limits_keep_the_first_images(tiny_archive, tmp_path, limit_train, limit_test, expected):
    counts = prepare(tiny_archive[0], tmp_path / "c.npz", limit_train=limit_train, limit_test=limit_test)
    assert (counts["train"], counts["test"]) == expected
    arrays, full = load_npz(tmp_path / "c.npz"), source_arrays()
    np.testing.assert_array_equal(arrays.train_labels, np.concatenate([y for _, y in full["train"]])[:expected[0]])
    np.testing.assert_array_equal(arrays.test_images.reshape(expected[1], -1), full["test"][0][0][:expected[1]])


@pytest.mark.parametrize("limits", [{"limit_train": 0}, {"limit_test": -1}])
def test_prepare_rejects_limits_below_one(tiny_archive, tmp_path, limits):
    with pytest.raises(DataError, match=next(iter(limits))):
        prepare(tiny_archive[0], tmp_path / "c.npz", **limits)
    assert_only(tmp_path)


def test_prepare_reads_numpy2_protocol5_and_python3_pickles(tmp_path):
    rng = np.random.default_rng(3)
    batch = {"data": rng.integers(0, 256, (6, 3072), dtype=np.uint8), "labels": np.arange(6) + 2,
             "batch_label": "training batch 2 of 5"}
    proto5 = pickle.dumps(batch, protocol=5)
    assert b"_frombuffer" in proto5  # the numpy 2 code path really is exercised
    path, _ = build_archive(tmp_path / "a.tar.gz", py2=False, replace={"data_batch_2": proto5})
    with tarfile.open(path) as tar:
        assert b"_codecs\nencode" in tar.extractfile(f"{BATCH_DIR}/data_batch_1").read()
    prepare(path, tmp_path / "c.npz")
    arrays, src = load_npz(tmp_path / "c.npz"), source_arrays()
    np.testing.assert_array_equal(arrays.train_images[7:13].reshape(6, -1), batch["data"])
    np.testing.assert_array_equal(arrays.train_labels[7:13], batch["labels"])
    np.testing.assert_array_equal(arrays.train_labels[:7], src["train"][0][1])


def test_prepare_accepts_bytes_keys(tmp_path):
    x = np.full((2, 3072), 9, np.uint8)
    raw = pickle.dumps({b"data": x, b"labels": [3, 4]}, protocol=2)
    path, _ = build_archive(tmp_path / "a.tar.gz", replace={"test_batch": raw})
    assert prepare(path, tmp_path / "c.npz")["test"] == 2
    np.testing.assert_array_equal(load_npz(tmp_path / "c.npz").test_labels, [3, 4])


HOSTILE = {
    "parent-dir": regular("../escaped.txt", b"x"),
    "deep-parent-dir": regular(f"{BATCH_DIR}/../../escaped.txt", b"x"),
    "absolute": regular("/tmp/absolute.txt", b"x"),
    "symlink": symlink(f"{BATCH_DIR}/passwd", "/etc/passwd"),
    "relative-symlink": symlink(f"{BATCH_DIR}/up", ".."),
    "hardlink": hardlink(f"{BATCH_DIR}/copy", f"{BATCH_DIR}/data_batch_1"),
    "char-device": chardev(f"{BATCH_DIR}/null"),
    "fifo": fifo(f"{BATCH_DIR}/pipe"),
    "duplicate": regular(f"{BATCH_DIR}/data_batch_1", batch_pickle(np.zeros((1, 3072), np.uint8), [0])),
}


@pytest.mark.parametrize("member", HOSTILE.values(), ids=HOSTILE.keys())
def test_prepare_rejects_hostile_members(tmp_path, member):
    path, _ = build_archive(tmp_path / "a.tar.gz", extra=[member])
    out = tmp_path / "out" / "c.npz"
    with pytest.raises(DataError) as err:
        prepare(path, out)
    assert repr(member[0].name) in str(err.value)
    assert not out.exists() and not (tmp_path / "escaped.txt").exists()


def test_prepare_rejects_a_batch_replaced_by_a_symlink(tmp_path):
    path, _ = build_archive(tmp_path / "a.tar.gz", replace={"data_batch_1": None},
                            extra=[symlink(f"{BATCH_DIR}/data_batch_1", "/etc/passwd")])
    with pytest.raises(DataError, match="data_batch_1.*symbolic link"):
        prepare(path, tmp_path / "c.npz")
    assert not (tmp_path / "c.npz").exists()


@pytest.mark.parametrize("via", ["os.system", "builtins.eval"])
def test_prepare_never_runs_code_from_a_pickle(tmp_path, via):
    pickle.loads(evil_pickle(tmp_path / "proof", via))  # the payload is live under a plain unpickler
    assert (tmp_path / "proof").exists()

    marker = tmp_path / "pwned"
    path, _ = build_archive(tmp_path / "a.tar.gz", replace={"data_batch_3": evil_pickle(marker, via)})
    with pytest.raises(DataError, match=f"refusing to unpickle {via} from data_batch_3"):
        prepare(path, tmp_path / "c.npz")
    assert not marker.exists() and not (tmp_path / "c.npz").exists()


BAD_BATCHES = {
    "short-rows": (batch_pickle(np.zeros((4, 3000), np.uint8), [0] * 4), r"\(N, 3072\).*\(4, 3000\)"),
    "float-data": (batch_pickle(np.zeros((2, 3072), np.float32), [0] * 2), r"uint8.*float32"),
    "data-not-array": (pickle.dumps({"data": [1, 2], "labels": [0, 1]}, protocol=2), r"found list"),
    "label-too-big": (batch_pickle(np.zeros((4, 3072), np.uint8), [0, 1, 10, 3]), r"0\.\.9, found 10 at index 2"),
    "label-negative": (batch_pickle(np.zeros((2, 3072), np.uint8), [0, -1]), r"0\.\.9, found -1"),
    "label-count": (batch_pickle(np.zeros((3, 3072), np.uint8), [0, 1]), r"3 ints.*shape \(2,\)"),
    "float-labels": (pickle.dumps({"data": np.zeros((1, 3072), np.uint8), "labels": [0.5]}), r"float64"),
    "no-labels": (pickle.dumps({"data": np.zeros((1, 3072), np.uint8)}), r"no 'labels'"),
    "not-a-dict": (pickle.dumps([1, 2, 3]), r"holds a list"),
    "not-a-pickle": (b"\x00garbage", r"not a readable pickle"),
}


@pytest.mark.parametrize("payload, pattern", BAD_BATCHES.values(), ids=BAD_BATCHES.keys())
def test_prepare_rejects_bad_batches(tmp_path, payload, pattern):
    path, _ = build_archive(tmp_path / "a.tar.gz", replace={"data_batch_4": payload})
    with pytest.raises(DataError, match=f"data_batch_4.*{pattern}"):
        prepare(path, tmp_path / "c.npz")
    assert not (tmp_path / "c.npz").exists()


@pytest.mark.parametrize("missing", ["data_batch_5", "test_batch"])
def test_prepare_rejects_missing_batch(tmp_path, missing):
    path, _ = build_archive(tmp_path / "a.tar.gz", replace={missing: None})
    with pytest.raises(DataError, match=f"no file {BATCH_DIR}/{missing}"):
        prepare(path, tmp_path / "c.npz")
    assert not (tmp_path / "c.npz").exists()


@pytest.mark.parametrize("damage", ["not-gzip", "truncated", "flipped"])
def test_prepare_rejects_damaged_archive(tiny_archive, tmp_path, damage):
    raw = bytearray(tiny_archive[0].read_bytes())
    if damage == "not-gzip":
        raw = b"<html>not an archive</html>"
    elif damage == "truncated":
        raw = raw[: len(raw) // 2]
    else:
        raw[len(raw) // 2: len(raw) // 2 + 64] = bytes(64)
    (tmp_path / "a.tar.gz").write_bytes(raw)
    with pytest.raises(DataError, match="damaged.*download it again"):
        prepare(tmp_path / "a.tar.gz", tmp_path / "c.npz")
    assert not (tmp_path / "c.npz").exists()


def test_prepare_missing_archive(tmp_path):
    with pytest.raises(DataError, match="download step"):
        prepare(tmp_path / "none.tar.gz", tmp_path / "c.npz")


def test_prepare_read_only_folder(tiny_archive, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("this user can write to a read-only folder (root?)")
        with pytest.raises(DataError, match="cannot write"):
            prepare(tiny_archive[0], folder / "c.npz")
        assert_only(folder)
    finally:
        folder.chmod(0o755)


def test_prepare_output_under_a_file(tiny_archive, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="cannot write"):
        prepare(tiny_archive[0], tmp_path / "file" / "c.npz")


def test_prepare_failure_while_writing_leaves_nothing(tiny_archive, tmp_path, monkeypatch):
    def disk_full(f, **arrays):
        f.write(b"PK\x03\x04 half an archive")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(data.np, "savez", disk_full)
    with pytest.raises(DataError, match="No space left"):
        prepare(tiny_archive[0], tmp_path / "c.npz")
    assert_only(tmp_path)


# ------------------------------------------------------------------------------------------ load_npz

def test_load_npz_names_a_missing_key(tmp_path):
    arrays = {k: np.zeros(1) for k in data.Cifar10Arrays._fields if k != "test_labels"}
    with open(tmp_path / "c.npz", "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(DataError, match="'test_labels'.*prepare"):
        load_npz(tmp_path / "c.npz")


@pytest.mark.parametrize("content", [None, b"not an npz", b"PK\x03\x04broken zip"])
def test_load_npz_bad_files(tmp_path, content):
    if content is not None:
        (tmp_path / "c.npz").write_bytes(content)
    with pytest.raises(DataError, match="prepare step"):
        load_npz(tmp_path / "c.npz")


def npz_with(path, **changes) -> None:
    """A prepared file of 4 training and 3 test images, with ``changes`` replacing (or, as None, removing) arrays."""
    rng = np.random.default_rng(0)
    arrays = {"train_images": rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8),
              "train_labels": np.array([0, 1, 9, 3]),
              "test_images": rng.integers(0, 256, (3, 3, 32, 32), dtype=np.uint8),
              "test_labels": np.array([2, 5, 7])}
    arrays.update(changes)
    with open(path, "wb") as f:
        np.savez(f, **{k: v for k, v in arrays.items() if v is not None})


def test_load_npz_accepts_any_integer_labels_and_returns_int64(tmp_path):
    npz_with(tmp_path / "c.npz", train_labels=np.array([0, 1, 9, 3], np.uint8))
    arrays = load_npz(tmp_path / "c.npz")
    assert arrays.train_labels.dtype == np.int64 and arrays.test_labels.dtype == np.int64
    np.testing.assert_array_equal(arrays.train_labels, [0, 1, 9, 3])
    assert arrays.train_images.shape == (4, 3, 32, 32)


DAMAGED_NPZ = {
    "float-images": ({"train_images": np.zeros((4, 3, 32, 32), np.float32)},
                     r"train_images should be uint8 of shape \(N, 3, 32, 32\), "
                     r"found float32 of shape \(4, 3, 32, 32\)"),
    "channels-last": ({"test_images": np.zeros((3, 32, 32, 3), np.uint8)},
                      r"test_images .* found uint8 of shape \(3, 32, 32, 3\)"),
    "flat-images": ({"train_images": np.zeros((4, 3072), np.uint8)}, r"train_images .* shape \(4, 3072\)"),
    "float-labels": ({"train_labels": np.array([0.0, 1, 2, 3])}, r"train_labels should be integers .* found float64"),
    "2d-labels": ({"test_labels": np.zeros((3, 1), np.int64)},
                  r"test_labels should be integers of shape \(N,\), found int64 of shape \(3, 1\)"),
    "label-10": ({"test_labels": np.array([2, 10, 7])}, r"test_labels must be 0\.\.9, found 10 at index 1"),
    "label-negative": ({"train_labels": np.array([0, -1, -2, 3])},
                       r"train_labels must be 0\.\.9, found -1 at index 1 \(2 out of range\)"),
    "count-mismatch": ({"train_labels": np.array([0, 1, 2])}, r"train_labels has 3 labels for 4 images"),
    "empty-split": ({"test_images": np.zeros((0, 3, 32, 32), np.uint8), "test_labels": np.zeros(0, np.int64)},
                    r"the test split is empty"),
    "missing-key": ({"test_labels": None},
                    r"no array 'test_labels' \(found \['test_images', 'train_images', 'train_labels'\]\)"),
    "object-array": ({"test_labels": np.array([1, "x", None], dtype=object)}, r"not a readable \.npz"),
}


@pytest.mark.parametrize("changes, pattern", DAMAGED_NPZ.values(), ids=DAMAGED_NPZ.keys())
def test_load_npz_refuses_a_damaged_file_naming_the_array(tmp_path, changes, pattern):
    npz_with(tmp_path / "c.npz", **changes)
    with pytest.raises(DataError, match=pattern) as err:
        load_npz(tmp_path / "c.npz")
    assert str(tmp_path / "c.npz") in str(err.value) and "rerun the prepare step" in str(err.value)


# ------------------------------------------------------------------- batches.meta and the configured MD5

def test_prepare_checks_the_md5_it_is_given(tiny_archive, tmp_path):
    path, md5 = tiny_archive
    assert prepare(path, tmp_path / "c.npz", md5=md5) == {"train": 30, "test": 12}


def test_prepare_refuses_an_archive_that_is_not_the_configured_one_before_reading_it(tmp_path):
    other = tmp_path / "cifar-10-python.tar.gz"
    other.write_bytes(b"<html>not even an archive</html>")  # reading it would fail otherwise
    with pytest.raises(DataError) as err:
        prepare(other, tmp_path / "c.npz", md5=WRONG_MD5)
    message = str(err.value)
    assert file_md5(other) in message and WRONG_MD5 in message and str(other) in message
    assert "not the configured archive" in message and "dataset.md5" in message and "Delete it" in message
    assert "damaged" not in message
    assert_only(tmp_path, "cifar-10-python.tar.gz")


def test_prepare_refuses_a_malformed_md5(tiny_archive, tmp_path):
    with pytest.raises(DataError, match="32 lowercase hex"):
        prepare(tiny_archive[0], tmp_path / "c.npz", md5="C58F")


def test_prepare_refuses_an_archive_without_batches_meta(tmp_path):
    path, _ = build_archive(tmp_path / "a.tar.gz", replace={"batches.meta": None})
    with pytest.raises(DataError, match=f"no file {BATCH_DIR}/batches.meta"):
        prepare(path, tmp_path / "c.npz")
    assert not (tmp_path / "c.npz").exists()


CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
WRONG_META = {
    "cifar100-like": {"fine_label_names": ["apple"] * 100},
    "reordered": {"label_names": CIFAR10[::-1]},
    "nine-classes": {"label_names": CIFAR10[:9]},
    "not-a-list": {"label_names": "airplane"},
    "not-a-dict": ["airplane"],
}


@pytest.mark.parametrize("meta", WRONG_META.values(), ids=WRONG_META.keys())
def test_prepare_refuses_wrong_class_names(tmp_path, meta):
    path, _ = build_archive(tmp_path / "a.tar.gz", replace={"batches.meta": pickle.dumps(meta, protocol=2)})
    with pytest.raises(DataError,
                       match=f"{BATCH_DIR}/batches.meta: 'label_names' should be the CIFAR-10 classes") as err:
        prepare(path, tmp_path / "c.npz")
    assert "not the CIFAR-10 python archive" in str(err.value)
    assert not (tmp_path / "c.npz").exists()


@pytest.mark.parametrize("meta", [{b"label_names": [n.encode() for n in CIFAR10]}, {"label_names": tuple(CIFAR10)}],
                         ids=["bytes", "str"])
def test_prepare_accepts_class_names_as_bytes_or_str(tmp_path, meta):
    path, _ = build_archive(tmp_path / "a.tar.gz", replace={"batches.meta": pickle.dumps(meta, protocol=2)})
    assert prepare(path, tmp_path / "c.npz") == {"train": 30, "test": 12}


def test_data_module_keeps_no_copy_of_the_configured_url_or_md5():
    assert data.CLASSES == tuple(CIFAR10)
    assert not hasattr(data, "OFFICIAL_URL") and not hasattr(data, "OFFICIAL_MD5")
