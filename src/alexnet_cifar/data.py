"""CIFAR-10: download and verify the official archive, then turn it into one checked ``.npz``.

The archive is untrusted input until proven otherwise: :func:`download` keeps it only once its MD5
matches, and :func:`prepare` reads the batches straight out of the tar (nothing is extracted) with
an unpickler that can build numpy arrays and nothing else. Every bad input raises
:class:`DataError`, whose message says what is wrong and what to do about it.
"""
from __future__ import annotations

import codecs
import hashlib
import http.client
import io
import os
import pickle
import posixpath
import re
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO, NamedTuple

import numpy as np
from numpy._core.multiarray import _reconstruct
from numpy._core.numeric import _frombuffer

from .atomic import atomic_path
from .errors import UserError

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

BATCH_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"  # the class names: CIFAR-100 and other look-alikes differ here

_CHUNK = 1 << 20
_BACKOFF_S = 0.5  # first retry waits this long, then twice as long each time
_MD5_RE = re.compile(r"[0-9a-f]{32}")
_REFETCH = "delete it and download it again (check dataset.url and dataset.md5 in the config)"
_REPREPARE = "delete it and rerun the prepare step"
# Only what numpy needs to rebuild an ndarray: protocol 2 from Python 2 / numpy 1.x (the official
# file), protocol 2 from Python 3 (bytes via _codecs.encode) and protocol 5 from numpy 2.
_SAFE_GLOBALS: dict[tuple[str, str], object] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class DataError(UserError):
    """Bad input data (archive, URL, checksum, file); the message names the problem and the fix."""


class Cifar10Arrays(NamedTuple):
    """The prepared data set: images uint8 (N, 3, 32, 32) RGB, labels int64 in 0..9."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


# ----------------------------------------------------------------------------------------- download

def file_md5(path: str | os.PathLike) -> str:
    """MD5 of a file, as 32 lowercase hex digits."""
    digest = hashlib.md5()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    except FileNotFoundError:
        raise DataError(f"{path} does not exist: check the path (or run the download step)") from None
    return digest.hexdigest()


def download(url: str | os.PathLike, dest: str | os.PathLike, md5: str, *, retries: int = 3, timeout: float = 60,
             log: Callable[[str], None] | None = None) -> Path:
    """Fetch ``url`` (http, https, file:// or a plain path) to ``dest``, kept only if its MD5 is ``md5``.

    Network errors and HTTP 5xx are retried ``retries`` times with a short backoff; anything else
    fails at once. After a failure nothing new exists at ``dest``.
    """
    log = log or (lambda message: None)
    url, dest = os.fspath(url), Path(dest)
    _check_md5_format(md5)
    if not isinstance(retries, int) or retries < 0:
        raise DataError(f"retries must be a whole number >= 0, got {retries!r}")
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme in ("http", "https"):
        _fetch(url, dest, md5, retries, timeout, log)
    elif scheme in ("file", ""):  # "" is a plain path
        src = Path(urllib.request.url2pathname(urllib.parse.urlsplit(url).path) if scheme == "file" else url)
        if not src.is_file():
            raise DataError(f"{src} does not exist or is not a file: check dataset.url in the config")
        log(f"copying {src} -> {dest}")
        with open(src, "rb") as f, _writing(dest) as tmp:
            digest, html = _stream(f, tmp, dest, src.stat().st_size)
            _verify(digest, md5, url, html)
    else:
        raise DataError(f"cannot download {url}: unsupported scheme {scheme!r}; use http(s)://, file:// or a path")
    log(f"{dest}: MD5 {md5} OK")
    return dest


def _check_md5_format(md5: object) -> None:
    if not isinstance(md5, str) or not _MD5_RE.fullmatch(md5):
        raise DataError(f"invalid MD5 {md5!r}: it must be 32 lowercase hex digits; fix dataset.md5 in the config")


def _fetch(url: str, dest: Path, md5: str, retries: int, timeout: float, log: Callable[[str], None]) -> None:
    """Download with retries; raise DataError when every attempt failed or one failed for good."""
    attempts, reason = retries + 1, ""
    request = urllib.request.Request(url, headers={"User-Agent": "alexnet-cifar"})
    for attempt in range(1, attempts + 1):
        log(f"downloading {url} (attempt {attempt}/{attempts})")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response, _writing(dest) as tmp:
                length = response.headers.get("Content-Length", "")
                total = int(length) if length.isdigit() else None
                digest, html = _stream(response, tmp, dest, total)
                _verify(digest, md5, url, html or response.headers.get_content_type() == "text/html")
            return
        except urllib.error.HTTPError as e:
            e.close()
            if e.code < 500:
                raise DataError(f"{url} answered HTTP {e.code} {e.reason}: check dataset.url in the config") from None
            reason = f"HTTP {e.code} {e.reason}"
        except http.client.IncompleteRead as e:
            reason = f"connection closed early ({e.expected} bytes missing)"
        except urllib.error.URLError as e:
            reason = str(e.reason)
        except (http.client.HTTPException, OSError) as e:  # write errors arrive as DataError
            reason = f"{type(e).__name__}: {e}"
        if attempt < attempts:
            delay = _BACKOFF_S * 2 ** (attempt - 1)
            log(f"attempt {attempt}/{attempts} failed: {reason}; retrying in {delay:g} s")
            time.sleep(delay)
        else:
            log(f"attempt {attempt}/{attempts} failed: {reason}")
    raise DataError(f"could not download {url} after {attempts} attempts (last error: {reason}): check the "
                    "network and dataset.url in the config, or fetch the file by hand and set dataset.url to its path")


class _writing:
    """``atomic_path`` whose failure to create or rename the file (read-only folder, full disk) is a DataError."""

    def __init__(self, dest: Path) -> None:
        self.dest, self.inner = dest, atomic_path(dest)

    def __enter__(self) -> Path:
        try:
            return self.inner.__enter__()
        except OSError as e:
            raise _write_error(self.dest, e) from e

    def __exit__(self, kind, value, tb) -> bool | None:
        try:
            return self.inner.__exit__(kind, value, tb)
        except OSError as e:
            raise _write_error(self.dest, e) from e


def _write_error(dest: Path, e: OSError) -> DataError:
    return DataError(f"cannot write {dest}: {e}; check that its folder is writable and the disk has space")


def _stream(src: IO[bytes], tmp: Path, dest: Path, total: int | None) -> tuple[str, bool]:
    """Copy ``src`` to ``tmp`` (on its way to ``dest``); return (MD5, whether the body starts like an HTML page)."""
    digest, done, head, last = hashlib.md5(), 0, b"", 0.0
    show = sys.stderr.isatty()
    reading = False
    try:
        with open(tmp, "wb") as out:
            while True:
                reading = True
                chunk = src.read(_CHUNK)
                reading = False
                if not chunk:
                    break
                head = head or chunk[:64]
                digest.update(chunk)
                out.write(chunk)
                done += len(chunk)
                if show and (time.monotonic() - last > 0.25 or done == total):
                    last = time.monotonic()
                    size = f"{done / 1e6:.1f}/{total / 1e6:.1f} MB" if total else f"{done / 1e6:.1f} MB"
                    pct = f"{100 * done / total:3.0f}% " if total else ""
                    print(f"\r{dest.name}: {pct}({size})", end="", file=sys.stderr, flush=True)
    except OSError as e:
        if reading:  # a network error, for the caller to retry
            raise
        raise _write_error(dest, e) from e
    finally:
        if show:
            print(file=sys.stderr)
    if total is not None and done < total:
        # http.client returns a short body without complaint when it is read in chunks
        raise http.client.IncompleteRead(b"", total - done)
    return digest.hexdigest(), head.lstrip().startswith(b"<")


def _verify(actual: str, expected: str, url: str, html: bool) -> None:
    if actual != expected:
        page = " The server returned an HTML page, not the archive." if html else ""
        raise DataError(f"MD5 mismatch for {url}: expected {expected}, got {actual}.{page} Check dataset.url and "
                        "dataset.md5 in the config (the file was not kept).")


# ------------------------------------------------------------------------------------------ prepare

def prepare(archive: str | os.PathLike, out: str | os.PathLike, *, md5: str | None = None,
            limit_train: int | None = None, limit_test: int | None = None) -> dict[str, int]:
    """Check the CIFAR-10 archive and write its images and labels to ``out`` (an uncompressed .npz).

    With ``md5`` the archive must have that MD5, checked before anything is read: an archive put in
    the data folder by hand is never downloaded, so this is where one that is not the configured
    archive is caught. Images become uint8 (N, 3, 32, 32), labels int64; ``limit_*`` keep the first
    N of a split. Returns the number of images written per split.
    """
    for name, limit in (("limit_train", limit_train), ("limit_test", limit_test)):
        if limit is not None and limit < 1:
            raise DataError(f"{name} must be at least 1 (or unset to keep every image), got {limit}")
    archive, out = Path(archive), Path(out)
    if not archive.is_file():
        raise DataError(f"archive {archive} does not exist: run the download step first")
    if md5 is not None:
        _check_md5_format(md5)
        actual = file_md5(archive)
        if actual != md5:
            raise DataError(f"{archive} has MD5 {actual}, but the config expects {md5} (dataset.md5): it is not "
                            "the configured archive. Delete it to have the configured one downloaded, or, if it "
                            "is the archive you want, set dataset.md5 (and dataset.url) in the config to match it")
    batches = _read_batches(archive)
    train_x = np.concatenate([batches[b][0] for b in TRAIN_BATCHES])[:limit_train]
    train_y = np.concatenate([batches[b][1] for b in TRAIN_BATCHES])[:limit_train]
    test_x, test_y = (a[:limit_test] for a in batches[TEST_BATCH])
    with _writing(out) as tmp:
        try:
            with open(tmp, "wb") as f:  # a file object, so numpy adds no ".npz"
                np.savez(f, train_images=train_x.reshape(-1, 3, 32, 32), train_labels=train_y,
                         test_images=test_x.reshape(-1, 3, 32, 32), test_labels=test_y)
        except OSError as e:
            raise _write_error(out, e) from e
    return {"train": len(train_y), "test": len(test_y)}


def load_npz(path: str | os.PathLike) -> Cifar10Arrays:
    """Load what :func:`prepare` wrote, checked as :class:`Cifar10Arrays` describes (labels as int64).

    Every reader of the data set goes through here, so a damaged or hand-made file is refused with
    its problem named instead of training on something else.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist: run the prepare step first")
    try:
        with np.load(path, allow_pickle=False) as npz:
            for key in Cifar10Arrays._fields:
                if key not in npz.files:
                    raise DataError(f"{path} has no array {key!r} (found {sorted(npz.files)}): {_REPREPARE}")
            arrays = {key: npz[key] for key in Cifar10Arrays._fields}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path} is not a readable .npz ({e}): {_REPREPARE}") from e
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        arrays[f"{split}_labels"] = _check_split(path, split, images, labels)
    return Cifar10Arrays(**arrays)


def validation_split(labels: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(training indexes, validation indexes) of a training split with ``labels``: ``count`` images
    held out, per class as equal in number as the classes allow, the last images of each class in
    the data's order. The same for every run and seed (CIFAR-10's order is already shuffled, and
    "the last of each class" depends on no random generator or library version); the rest keep
    their order. Raises DataError if there are not ``count`` images."""
    if count > len(labels):
        raise DataError(f"validation_images: {count} asked for, but the training split has only {len(labels)} "
                        f"images; lower validation_images (or raise dataset.limit_train)")
    by_class = [np.flatnonzero(labels == c) for c in range(len(CLASSES))]
    quota = [0] * len(CLASSES)
    left = count
    while left:  # one image per class in turn, skipping classes that have none left
        for c, members in enumerate(by_class):
            if left and quota[c] < len(members):
                quota[c] += 1
                left -= 1
    held = np.sort(np.concatenate([members[len(members) - q:] for members, q in zip(by_class, quota, strict=True)]))
    keep = np.ones(len(labels), dtype=bool)
    keep[held] = False
    return np.flatnonzero(keep), held.astype(np.int64)


def load_labels(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(training labels, test labels) of what :func:`prepare` wrote, checked as :func:`load_npz`
    checks them, without reading the images (for what needs only the labels)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist: run the prepare step first")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [key for key in ("train_labels", "test_labels") if key not in npz.files]
            if missing:
                raise DataError(f"{path} has no array {missing[0]!r} (found {sorted(npz.files)}): {_REPREPARE}")
            labels = npz["train_labels"], npz["test_labels"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path} is not a readable .npz ({e}): {_REPREPARE}") from e
    for split, values in zip(("train", "test"), labels, strict=True):
        if values.ndim != 1 or values.dtype.kind not in "iu" or len(values) == 0:
            raise DataError(f"{path}: {split}_labels should be integers of shape (N,), N >= 1, found {values.dtype} "
                            f"of shape {values.shape}: {_REPREPARE}")
        problem = _label_problem(values)
        if problem:
            raise DataError(f"{path}: {split}_labels {problem}: {_REPREPARE}")
    return labels[0].astype(np.int64), labels[1].astype(np.int64)


def _check_split(path: Path, split: str, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Check one split of the prepared file; return its labels as int64."""
    def fail(problem: str) -> DataError:
        return DataError(f"{path}: {problem}: {_REPREPARE}")
    if images.dtype != np.uint8 or images.shape[1:] != (3, 32, 32):
        raise fail(f"{split}_images should be uint8 of shape (N, 3, 32, 32), "
                   f"found {images.dtype} of shape {images.shape}")
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise fail(f"{split}_labels should be integers of shape (N,), found {labels.dtype} of shape {labels.shape}")
    if len(labels) != len(images):
        raise fail(f"{split}_labels has {len(labels)} labels for {len(images)} images in {split}_images")
    if len(labels) == 0:
        raise fail(f"the {split} split is empty")
    problem = _label_problem(labels)
    if problem:
        raise fail(f"{split}_labels {problem}")
    return labels.astype(np.int64)


def _label_problem(labels: np.ndarray) -> str | None:
    """Where integer labels leave the class indexes 0..9, in words; None when none does."""
    bad = np.flatnonzero((labels < 0) | (labels >= len(CLASSES)))
    if not bad.size:
        return None
    return f"must be 0..{len(CLASSES) - 1}, found {labels[bad[0]]} at index {bad[0]} ({bad.size} out of range)"


def _read_batches(archive: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Check every member of the tar, then read and check the six batches."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            listed = tar.getmembers()
            # tarfile takes a garbled header for the end of the archive; reading the gzip stream to
            # its end checks its CRC, so a damaged file is reported as such, not as a missing batch
            while tar.fileobj.read(_CHUNK):  # type: ignore[union-attr]
                pass
            members = _check_members(listed)
            wanted = [members[f"{BATCH_DIR}/{b}"] for b in (*TRAIN_BATCHES, TEST_BATCH, META)]
            batches = {}
            # in archive order: the gzip stream then needs one pass, not one per batch
            for member in sorted(wanted, key=lambda m: m.offset_data):
                short = posixpath.basename(posixpath.normpath(member.name))
                payload = tar.extractfile(member).read()  # type: ignore[union-attr]
                if short == META:
                    _check_meta(_unpickle(payload, short))
                else:
                    batches[short] = _check_batch(_unpickle(payload, short), short)
            return batches
    except PermissionError as e:
        raise DataError(f"cannot read {archive}: {e}; check its permissions") from e
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DataError(f"archive {archive} is damaged ({e}): {_REFETCH}") from e


def _check_members(members: list[tarfile.TarInfo]) -> dict[str, tarfile.TarInfo]:
    """Reject anything the official archive never holds; return the members by normalised name."""
    found: dict[str, tarfile.TarInfo] = {}
    for m in members:
        if not (m.isreg() or m.isdir()):
            kind = "symbolic link" if m.issym() else "hard link" if m.islnk() else "device file or fifo"
            raise DataError(f"archive member {m.name!r} is a {kind}; the CIFAR-10 archive holds only "
                            f"folders and regular files, so this is not it: {_REFETCH}")
        # data_filter strips a leading "/" instead of refusing it, so check that first
        if m.name.startswith(("/", "\\")) or os.path.isabs(m.name):
            raise DataError(f"archive member {m.name!r} has an absolute path: {_REFETCH}")
        name = posixpath.normpath(m.name)
        if name == ".." or name.startswith("../"):
            raise DataError(f"archive member {m.name!r} would land outside the archive's folder: {_REFETCH}")
        try:  # catches what is special to the platform
            tarfile.data_filter(m, "/cifar10-archive-root")
        except tarfile.FilterError as e:
            raise DataError(f"archive member {m.name!r} is unsafe ({e}): {_REFETCH}") from None
        if name in found:
            raise DataError(f"archive holds {m.name!r} twice: {_REFETCH}")
        found[name] = m
    for batch in (*TRAIN_BATCHES, TEST_BATCH, META):
        member = found.get(f"{BATCH_DIR}/{batch}")
        if member is None or not member.isreg():
            raise DataError(f"archive has no file {BATCH_DIR}/{batch}: it is not the CIFAR-10 python archive; "
                            f"{_REFETCH}")
    return found


class _BatchUnpickler(pickle.Unpickler):
    """Builds numpy arrays, lists, dicts and strings; refuses every other global."""

    def __init__(self, payload: bytes, member: str) -> None:
        super().__init__(io.BytesIO(payload), encoding="latin1")
        self.member = member

    def find_class(self, module: str, name: str) -> object:
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise DataError(f"refusing to unpickle {module}.{name} from {self.member}: CIFAR-10 batches hold only "
                            f"numpy arrays, lists and strings, so this archive is not the official one; "
                            f"{_REFETCH}") from None


def _unpickle(payload: bytes, member: str) -> object:
    try:
        return _BatchUnpickler(payload, member).load()
    except DataError:
        raise
    except Exception as e:  # a damaged pickle can fail in many ways; all mean the same to the user
        raise DataError(f"{member} is not a readable pickle ({type(e).__name__}: {e}): {_REFETCH}") from e


def _latin1(value: object) -> object:
    """A Python 2 byte string as text (the official pickles hold bytes or str, depending on how they are read)."""
    return value.decode("latin1") if isinstance(value, bytes) else value


def _check_meta(meta: object) -> None:
    """``batches.meta`` must name the ten CIFAR-10 classes in order, so labels 0..9 mean what the figures say."""
    names = meta.get(b"label_names", meta.get("label_names")) if isinstance(meta, dict) else None
    names = [_latin1(n) for n in names] if isinstance(names, (list, tuple)) else names
    if names != list(CLASSES):
        raise DataError(f"{BATCH_DIR}/{META}: 'label_names' should be the CIFAR-10 classes {list(CLASSES)}, "
                        f"found {names!r}; this is not the CIFAR-10 python archive: {_REFETCH}")


def _check_batch(batch: object, member: str) -> tuple[np.ndarray, np.ndarray]:
    """Return (data uint8 (N, 3072), labels int64 (N,)) from one unpickled batch."""
    if not isinstance(batch, dict):
        raise DataError(f"{member} holds a {type(batch).__name__}, expected a dict with 'data' and 'labels': "
                        f"{_REFETCH}")
    batch = {_latin1(k): v for k, v in batch.items()}
    for key in ("data", "labels"):
        if key not in batch:
            raise DataError(f"{member} has no {key!r} entry (found {sorted(map(str, batch))}): {_REFETCH}")
    data = batch["data"]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072):
        found = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{member}: 'data' should be a uint8 array of shape (N, 3072), found {found}: {_REFETCH}")
    try:
        labels = np.asarray(batch["labels"])
    except (ValueError, TypeError) as e:
        raise DataError(f"{member}: 'labels' should be a list of N ints, found something else ({e}): {_REFETCH}") from e
    if labels.size == 0:
        labels = labels.astype(np.int64)
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(data):
        raise DataError(f"{member}: 'labels' should be {len(data)} ints (one per image), found "
                        f"{labels.dtype} array of shape {labels.shape}: {_REFETCH}")
    problem = _label_problem(labels)
    if problem:
        raise DataError(f"{member}: labels {problem}: {_REFETCH}")
    return data, labels.astype(np.int64)
