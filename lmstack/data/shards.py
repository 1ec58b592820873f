"""Reading the token shards that `lmstack data prepare` writes (see lmstack/data/prepare.py for the layout).

Tokens are memory-mapped read-only: a corpus far larger than RAM costs nothing to open, pages are shared
between data-loader workers and ranks on one machine, and nothing can scribble over the shards.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lmstack.data.prepare import FORMAT, MANIFEST, SPLITS
from lmstack.errors import LmstackError


def read_manifest(folder) -> dict:
    folder = Path(folder)
    if not folder.is_dir():
        raise LmstackError(f"{folder}: token shard folder does not exist (make one with `lmstack data prepare`)")
    path = folder / MANIFEST
    if not path.is_file():
        raise LmstackError(f"{path}: missing; {folder} is not a finished `lmstack data prepare` output")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LmstackError(f"{path}: unreadable manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise LmstackError(f"{path}: format is {got!r}, expected {FORMAT!r}")
    return manifest


def _map(path: Path, dtype, count: int) -> np.ndarray:
    if not path.is_file():
        raise LmstackError(f"{path}: missing (the manifest lists {count} values)")
    size = path.stat().st_size
    itemsize = np.dtype(dtype).itemsize
    if size != count * itemsize:
        raise LmstackError(f"{path}: {size} bytes, but the manifest implies {count} x {itemsize} = "
                           f"{count * itemsize} bytes (truncated or from another run; prepare it again)")
    if count == 0:
        # np.memmap refuses empty files; an empty validation split is legitimate
        out = np.zeros(0, dtype)
        out.flags.writeable = False
        return out
    return np.memmap(path, dtype=dtype, mode="r", shape=(count,))


class TokenDataset:
    """One split of a token shard folder: `.tokens` (flat, read-only memmap), `.doc_offsets` (n_documents + 1)."""

    def __init__(self, folder, split: str = "train"):
        self.folder = Path(folder)
        self.split = split
        self.manifest = read_manifest(self.folder)
        splits = self.manifest.get("splits", {})
        if split not in SPLITS or split not in splits:
            raise LmstackError(f"{self.folder / MANIFEST}: no split {split!r} (splits: {', '.join(splits)})")
        try:
            self.dtype = np.dtype(self.manifest["dtype"])
            self.n_tokens = int(splits[split]["tokens"])
            self.n_documents = int(splits[split]["documents"])
        except (KeyError, TypeError, ValueError) as e:
            raise LmstackError(f"{self.folder / MANIFEST}: bad or missing field ({e})") from None
        self.eos_appended = bool(self.manifest.get("eos_appended", self.manifest.get("eos_id") is not None))
        self._open()

    def _open(self):
        self.tokens = _map(self.folder / f"{self.split}.bin", self.dtype, self.n_tokens)
        self.doc_offsets = _map(self.folder / f"{self.split}.idx", np.int64, self.n_documents + 1)
        if self.doc_offsets[0] != 0 or self.doc_offsets[-1] != self.n_tokens:
            raise LmstackError(f"{self.folder / f'{self.split}.idx'}: offsets run from {self.doc_offsets[0]} to "
                               f"{self.doc_offsets[-1]}, expected 0 to {self.n_tokens}")

    # np.memmap would pickle as a full in-memory copy; data-loader workers and spawned processes reopen instead
    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("tokens", "doc_offsets")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._open()

    def __repr__(self):
        return (f"TokenDataset({str(self.folder)!r}, split={self.split!r}, tokens={self.n_tokens:,}, "
                f"documents={self.n_documents:,}, dtype={self.dtype.name})")

    @property
    def name(self) -> str:
        return f"{self.folder}:{self.split}"

    @property
    def tokenizer_path(self) -> Path | None:
        """The copy of the tokenizer saved with the shards, else the one the manifest names (None if neither)."""
        copy = self.folder / self.manifest.get("tokenizer_copy", "tokenizer")
        if (copy / "tokenizer.json").is_file():
            return copy
        named = self.manifest.get("tokenizer")
        return Path(named) if named else None

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["vocab_size"])

    def documents(self, i: int) -> np.ndarray:
        """The tokens of document i, without the eos separator that follows it in `.tokens`."""
        if not -self.n_documents <= i < self.n_documents:
            raise IndexError(f"document {i} out of range ({self.n_documents} documents in {self.name})")
        i %= self.n_documents
        a, b = int(self.doc_offsets[i]), int(self.doc_offsets[i + 1])
        return self.tokens[a : b - 1 if self.eos_appended else b]

    document = documents
