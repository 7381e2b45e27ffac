"""Small archives in the layout of the official ``cifar-10-python.tar.gz``, honest or hostile.

:func:`build_archive` writes 6 batches of synthetic images (each class its own mean colour plus
noise, so a tiny model can learn something) pickled as the official Python 2 file was. Extra,
replacement and missing members (see :func:`regular`, :func:`symlink`, ... and :func:`batch_pickle`)
turn it into the hostile archives the tests need. Same arguments, same bytes.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import shlex
import struct
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

BATCH_DIR = "cifar-10-batches-py"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
#: One mean colour (R, G, B) per class.
PALETTE = np.array([(135, 170, 220), (200, 40, 40), (220, 200, 60), (150, 100, 60), (110, 140, 60),
                    (230, 140, 50), (40, 170, 60), (120, 60, 120), (30, 60, 140), (160, 160, 160)])
MTIME = 1262304000  # 2010-01-01, as any fixed value would do

Member = tuple[tarfile.TarInfo, bytes]


class _Py2Pickler(pickle._Pickler):  # the pure-Python pickler, whose dispatch table can be changed
    """Writes str and bytes as Python 2 byte strings and numpy's globals as numpy 1.x named them."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2str(self, obj: str | bytes) -> None:
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = _save_py2str
    dispatch[bytes] = _save_py2str

    def save_global(self, obj, name=None):
        module = getattr(obj, "__module__", "")
        if not module.startswith("numpy._core"):
            return super().save_global(obj, name)
        module = "numpy.core" + module[len("numpy._core"):]
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)


def dumps(obj: object, *, py2: bool = True) -> bytes:
    """Protocol-2 pickle, written as Python 2 + numpy 1.x did (``py2``) or as Python 3 does."""
    if not py2:
        return pickle.dumps(obj, protocol=2)
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def make_split(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images as rows of 3072 bytes (R plane, G plane, B plane) and their labels (every class once per 10)."""
    labels = rng.permutation(np.arange(n) % 10)
    pixels = PALETTE[labels][:, :, None] + rng.normal(0, 25, size=(n, 3, 1024))
    return np.clip(pixels, 0, 255).astype(np.uint8).reshape(n, 3072), labels.astype(np.int64)


def source_arrays(train_counts: Sequence[int] = (7, 5, 6, 4, 8), test_count: int = 12,
                  seed: int = 0) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """What :func:`build_archive` puts in each batch: {"train": [(data, labels)] * 5, "test": [(data, labels)]}."""
    rng = np.random.default_rng(seed)
    x, y = make_split(sum(train_counts), rng)  # one split, cut into batches: all classes even in tiny batches
    cuts = np.cumsum(train_counts)[:-1]
    return {"train": list(zip(np.split(x, cuts), np.split(y, cuts), strict=True)),
            "test": [make_split(test_count, rng)]}


def batch_pickle(data: np.ndarray, labels: Iterable[int], *, label: str = "training batch 1 of 5",
                 py2: bool = True) -> bytes:
    """One batch, pickled like the official ones (labels as a list of Python ints)."""
    labels = [int(v) for v in labels]
    return dumps({"batch_label": label, "labels": labels, "data": data,
                  "filenames": [f"image_{i:05d}.png" for i in range(len(labels))]}, py2=py2)


def regular(name: str, payload: bytes = b"") -> Member:
    info = _info(name, tarfile.REGTYPE)
    info.size = len(payload)
    return info, payload


def symlink(name: str, target: str) -> Member:
    info = _info(name, tarfile.SYMTYPE)
    info.linkname = target
    return info, b""


def hardlink(name: str, target: str) -> Member:
    info = _info(name, tarfile.LNKTYPE)
    info.linkname = target
    return info, b""


def chardev(name: str, major: int = 1, minor: int = 3) -> Member:
    """A character device (1, 3 is /dev/null); writing its header needs no privileges."""
    info = _info(name, tarfile.CHRTYPE)
    info.devmajor, info.devminor = major, minor
    return info, b""


def fifo(name: str) -> Member:
    return _info(name, tarfile.FIFOTYPE), b""


def evil_pickle(marker: str | Path, via: str = "os.system") -> bytes:
    """A pickle that, loaded by plain ``pickle.loads``, creates the file ``marker`` through ``via``.

    Written opcode by opcode, so the global it calls is named exactly ``os.system`` / ``builtins.eval``.
    """
    if via == "os.system":
        module, name, arg = "os", "system", f"touch {shlex.quote(str(marker))}"
    elif via == "builtins.eval":
        module, name, arg = "builtins", "eval", f"__import__('pathlib').Path({str(marker)!r}).touch()"
    else:
        raise ValueError(f"unknown payload {via!r}")
    return f"c{module}\n{name}\n(V{arg}\ntR.".encode()


def build_archive(path: str | Path, *, train_counts: Sequence[int] = (7, 5, 6, 4, 8), test_count: int = 12,
                  seed: int = 0, py2: bool = True, replace: Mapping[str, bytes | None] | None = None,
                  extra: Iterable[Member] = ()) -> tuple[Path, str]:
    """Write a gzip'd tar laid out like ``cifar-10-python.tar.gz``; return (path, MD5).

    ``replace`` maps a member's name inside ``cifar-10-batches-py/`` (e.g. ``"data_batch_3"``) to the
    bytes to store instead, or to None to leave it out; ``extra`` members are appended at the end.
    """
    path, replace = Path(path), dict(replace or {})
    src = source_arrays(train_counts, test_count, seed)
    payloads = {f"data_batch_{i}": batch_pickle(x, y, label=f"training batch {i} of 5", py2=py2)
                for i, (x, y) in enumerate(src["train"], 1)}
    payloads["test_batch"] = batch_pickle(*src["test"][0], label="testing batch 1 of 1", py2=py2)
    payloads["batches.meta"] = dumps({"label_names": list(CLASSES), "num_cases_per_batch": max(train_counts),
                                      "num_vis": 3072}, py2=py2)
    payloads["readme.html"] = b'<meta HTTP-EQUIV="REFRESH" content="0; URL=http://www.cs.toronto.edu/~kriz/cifar.html">\n'
    payloads.update(replace)
    members = [(_info(BATCH_DIR, tarfile.DIRTYPE, 0o755), b"")]
    members += [regular(f"{BATCH_DIR}/{name}", data) for name, data in payloads.items() if data is not None]
    members += list(extra)
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path, hashlib.md5(path.read_bytes()).hexdigest()


def _info(name: str, kind: bytes, mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mtime, info.mode = kind, MTIME, mode
    info.uname = info.gname = "kriz"
    return info
