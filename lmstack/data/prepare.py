"""`lmstack data prepare`: text corpora -> memory-mapped token shards with document boundaries.

Output folder:
    train.bin, val.bin   flat token ids (uint16 when the vocabulary fits, else uint32); every document is
                         followed by the eos token (GPT-2's separator) unless eos=False
    train.idx, val.idx   int64 start offset of every document, then the end offset (n_documents + 1 values)
    manifest.json        token counts, sources with checksums, skipped records and how the shards were made
    tokenizer/           a copy of the tokenizer that made them

Tokenising is the slow step, so it happens once, here, in worker processes; training only maps the files.
The main process reads and chunks the text and writes results in submission order, so the output bytes do not
depend on the number of workers, and the train/validation split is a hash of (seed, source, document index),
so it depends on neither worker count nor order.
"""

from __future__ import annotations

import collections
import datetime
import glob
import gzip
import hashlib
import io
import json
import multiprocessing as mp
import os
import time
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from lmstack.errors import LmstackError
from lmstack.tokenizer import Tokenizer

FORMAT = "lmstack-tokens-v1"
SPLITS = ("train", "val")
MANIFEST = "manifest.json"
TOKENIZER_COPY = "tokenizer"  # subfolder of the output holding a copy of the tokenizer
DOC_SPLITS = ("blank_line", "file", "line")
# Suffix (after an optional .gz) -> reader. .json is left out on purpose: it may be JSONL or one big array.
SUFFIXES = {".txt": "txt", ".text": "txt", ".md": "md", ".markdown": "md", ".jsonl": "jsonl",
            ".ndjson": "jsonl", ".parquet": "parquet"}
MAX_SKIP_EXAMPLES = 100
# Chunks of about this much text amortise inter-process overhead while keeping the progress bar lively
CHUNK_BYTES = 1 << 20
CHUNK_DOCS = 4096


def token_dtype(vocab_size: int) -> np.dtype:
    # Ids run from 0 to vocab_size - 1, so a vocabulary of exactly 65536 still fits in 16 bits
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def tokenizer_sha256(tokenizer) -> str:
    """Checksum of the tokenizer's canonical tokenizer.json text (`backend.to_str()`).

    Hashing the canonical serialisation rather than a file on disk makes the same tokenizer match whether it
    was saved pretty-printed, copied into a checkpoint or loaded from vocab.json+merges.txt, so training can
    compare a model's tokenizer with the one the shards were made with.
    """
    return hashlib.sha256(tokenizer.backend.to_str().encode("utf-8")).hexdigest()


# ---- inputs -----------------------------------------------------------------------------------------------------


@dataclass
class Source:
    spec: str  # a file path or an hf:NAME[:CONFIG][:SPLIT] spec; also the key of the split hash
    fmt: str  # txt | md | jsonl | parquet | hf
    gz: bool = False
    role: str = "auto"  # auto: documents split by hash; val: every document goes to validation

    @property
    def is_file(self) -> bool:
        return self.fmt != "hf"


def _format_of(path: str) -> tuple[str | None, bool]:
    p = path.lower()
    gz = p.endswith(".gz")
    if gz:
        p = p[:-3]
    return SUFFIXES.get(os.path.splitext(p)[1]), gz


def _supported() -> str:
    return ", ".join(sorted(set(SUFFIXES))) + " (optionally .gz)"


def _walk(folder: str) -> list[str]:
    out = []
    for root, dirs, files in os.walk(folder):
        # Hidden folders and files (.git, editor swap files) are never corpus text
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out += [os.path.join(root, f) for f in sorted(files) if not f.startswith(".") and _format_of(f)[0]]
    return out


def parse_hf_spec(spec: str) -> tuple[str, str | None, str]:
    """`hf:NAME[:CONFIG][:SPLIT]` -> (name, config or None, split, default "train")."""
    parts = spec[3:].split(":")
    if not parts[0] or len(parts) > 3 or any(not p for p in parts[1:]):
        raise LmstackError(f"{spec}: expected hf:NAME[:CONFIG][:SPLIT], e.g. hf:wikitext:wikitext-2-raw-v1:train")
    name, config, split = parts[0], parts[1] if len(parts) > 1 else None, parts[2] if len(parts) > 2 else "train"
    return name, config, split


def _hf_offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _check_hf(spec: str) -> None:
    # Checked while resolving inputs so that an offline run fails before any tokenising starts
    name = parse_hf_spec(spec)[0]
    if _hf_offline():
        raise LmstackError(
            f"hf:{name}: the Hugging Face hub is offline (HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set); "
            "unset it, or download the dataset and pass its files")
    try:  # optional: datasets
        import datasets  # noqa: F401
    except ImportError:
        raise LmstackError(f"hf:{name}: reading Hugging Face datasets needs `pip install datasets`") from None


def resolve_inputs(specs: Sequence[str], role: str = "auto") -> list[Source]:
    """Files, folders (recursed), globs and hf: specs -> sources in a stable order, duplicates dropped."""
    out: list[Source] = []
    seen: set[str] = set()

    def add(path: str, named: bool):
        fmt, gz = _format_of(path)
        if fmt is None:
            if named:
                raise LmstackError(f"{path}: unsupported input type; supported: {_supported()}")
            return
        key = Path(path).as_posix()
        if key not in seen:
            seen.add(key)
            out.append(Source(key, fmt, gz, role))

    for spec in specs:
        spec = str(spec)
        if spec.startswith("hf:"):
            _check_hf(spec)
            if spec not in seen:
                seen.add(spec)
                out.append(Source(spec, "hf", False, role))
            continue
        if any(c in spec for c in "*?["):
            matches = sorted(glob.glob(spec, recursive=True))
            if not matches:
                raise LmstackError(f"{spec}: no file matches this pattern")
            files = []
            for m in matches:
                files += _walk(m) if os.path.isdir(m) else [m] if _format_of(m)[0] else []
            if not files:
                raise LmstackError(f"{spec}: matches no {_supported()} file")
            for f in files:
                add(f, named=False)
        elif os.path.isdir(spec):
            files = _walk(spec)
            if not files:
                raise LmstackError(f"{spec}: folder holds no {_supported()} file")
            for f in files:
                add(f, named=False)
        elif os.path.isfile(spec):
            add(spec, named=True)
        else:
            raise LmstackError(f"{spec}: no such file or folder")
    return out


# ---- reading documents ------------------------------------------------------------------------------------------


@dataclass
class Skips:
    """Malformed records: raised at once, or with skip=True counted per source with the first examples kept."""

    skip: bool
    total: int = 0
    per_source: collections.Counter = field(default_factory=collections.Counter)
    examples: list = field(default_factory=list)

    def bad(self, source: str, where, reason: str) -> None:
        if not self.skip:
            raise LmstackError(f"{source}:{where}: {reason} (pass --skip-bad to skip malformed records)")
        self.total += 1
        self.per_source[source] += 1
        if len(self.examples) < MAX_SKIP_EXAMPLES:
            self.examples.append({"path": source, "line": where, "reason": reason})


def _open_binary(src: Source):
    try:
        return gzip.open(src.spec, "rb") if src.gz else open(src.spec, "rb")
    except OSError as e:
        raise LmstackError(f"{src.spec}: cannot open ({e.strerror or e})") from None


def _decode(raw: bytes, src: Source, lineno: int, skips: Skips) -> str | None:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        skips.bad(src.spec, lineno, f"not valid UTF-8 (byte {e.start})")
        return None
    return line.removeprefix("\ufeff") if lineno == 1 else line


def _text_docs(src: Source, mode: str, skips: Skips) -> Iterator[tuple[str, int]]:
    with _open_binary(src) as f:
        if mode == "file":
            data = f.read()
            try:
                text = data.decode("utf-8").removeprefix("\ufeff")
            except UnicodeDecodeError as e:
                skips.bad(src.spec, data.count(b"\n", 0, e.start) + 1, f"not valid UTF-8 (byte {e.start})")
                return
            if text.strip():
                yield text, len(data)
            return
        block: list[str] = []
        nbytes = 0
        for lineno, raw in enumerate(f, 1):
            nbytes += len(raw)
            line = _decode(raw, src, lineno, skips)
            if line is None:
                continue
            if mode == "line":
                if line.strip():
                    yield line.rstrip("\r\n"), nbytes
                    nbytes = 0
            elif line.strip():
                block.append(line)
            elif block:
                # The blank line is a separator, not text: the document ends without its last line break
                yield "".join(block).rstrip("\r\n"), nbytes
                block, nbytes = [], 0
        if block:
            yield "".join(block).rstrip("\r\n"), nbytes


def _jsonl_docs(src: Source, text_field: str, skips: Skips) -> Iterator[tuple[str, int]]:
    with _open_binary(src) as f:
        for lineno, raw in enumerate(f, 1):
            line = _decode(raw, src, lineno, skips)
            if line is None or not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                skips.bad(src.spec, lineno, f"invalid JSON: {e.msg} (column {e.colno})")
                continue
            if not isinstance(obj, dict):
                skips.bad(src.spec, lineno, f"expected a JSON object, got {type(obj).__name__}")
                continue
            if text_field not in obj:
                keys = ", ".join(list(obj)[:8])
                skips.bad(src.spec, lineno, f"no field {text_field!r} (fields: {keys}); set --text-field")
                continue
            text = obj[text_field]
            if not isinstance(text, str):
                skips.bad(src.spec, lineno, f"field {text_field!r} is {type(text).__name__}, not a string")
                continue
            if text:
                yield text, len(raw)


def _parquet_docs(src: Source, text_field: str, skips: Skips) -> Iterator[tuple[str, int]]:
    try:  # optional: pyarrow
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise LmstackError(f"{src.spec}: reading Parquet needs `pip install pyarrow`") from None
    # Parquet needs random access, so a gzipped file is decompressed into memory first
    where = io.BytesIO(_open_binary(src).read()) if src.gz else src.spec
    try:
        pf = pq.ParquetFile(where)
    except Exception as e:
        raise LmstackError(f"{src.spec}: not a readable Parquet file ({e})") from None
    schema = pf.schema_arrow
    if text_field not in schema.names:
        raise LmstackError(f"{src.spec}: no column {text_field!r} (columns: {', '.join(schema.names)}); "
                           "set --text-field")
    typ = schema.field(text_field).type
    is_str = [getattr(pa.types, n, lambda t: False) for n in ("is_string", "is_large_string", "is_string_view")]
    if not any(f(typ) for f in is_str):
        raise LmstackError(f"{src.spec}: column {text_field!r} has type {typ}, not string")
    row = 0
    for batch in pf.iter_batches(columns=[text_field], batch_size=4096):
        for text in batch.column(0).to_pylist():
            row += 1
            if text is None:
                skips.bad(src.spec, f"row {row}", f"{text_field!r} is null")
            elif text:
                yield text, len(text)


def _hf_docs(src: Source, text_field: str, skips: Skips) -> Iterator[tuple[str, int]]:
    import datasets  # optional: datasets (checked before any reading starts)

    name, config, split = parse_hf_spec(src.spec)
    try:
        # Streaming: a corpus far larger than the disk can still be tokenised, and nothing waits on a download
        ds = datasets.load_dataset(name, config, split=split, streaming=True)
    except Exception as e:
        raise LmstackError(f"{src.spec}: cannot load the dataset ({type(e).__name__}: {e})") from None
    for i, rec in enumerate(ds, 1):
        text = rec.get(text_field) if isinstance(rec, dict) else None
        if not isinstance(text, str):
            what = "missing" if not isinstance(rec, dict) or text_field not in rec else type(text).__name__
            skips.bad(src.spec, f"record {i}", f"field {text_field!r} is {what}, not a string; set --text-field")
        elif text:
            yield text, len(text)


def iter_documents(src: Source, text_field: str, doc_split: str | None, skips: Skips) -> Iterator[tuple[str, int]]:
    """(document text, input bytes it took) pairs of one source."""
    if src.fmt in ("txt", "md"):
        mode = doc_split or ("file" if src.fmt == "md" else "blank_line")
        docs = _text_docs(src, mode, skips)
    elif src.fmt == "jsonl":
        docs = _jsonl_docs(src, text_field, skips)
    elif src.fmt == "parquet":
        docs = _parquet_docs(src, text_field, skips)
    else:
        docs = _hf_docs(src, text_field, skips)
    try:
        yield from docs
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise LmstackError(f"{src.spec}: corrupt or truncated gzip file ({e})") from None
    except OSError as e:
        raise LmstackError(f"{src.spec}: cannot read ({e})") from None


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


# ---- tokenising (runs in the workers) ---------------------------------------------------------------------------


@dataclass
class Chunk:
    source: int
    key: str  # the source's spec, part of every document's split hash
    first_doc: int
    role: str
    texts: list[str]
    nbytes: int


@dataclass
class Encoded:
    tokens: np.ndarray  # the chunk's documents, each followed by eos when one is appended
    lengths: np.ndarray  # int64 tokens per document, separator included
    hashes: np.ndarray  # uint64 split hash per document
    is_val: np.ndarray  # bool per document


@dataclass
class _Job:
    tokenizer: object
    eos_id: int | None
    dtype: str
    seed: int
    val_threshold: int  # a document of an "auto" source is validation when its hash is below this


_WORKER_JOB: _Job | None = None


def _init_worker(job: _Job) -> None:
    global _WORKER_JOB
    # Each worker is one process; the tokenizers library's own thread pool would only oversubscribe the cores
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER_JOB = job


def _encode_in_worker(chunk: Chunk) -> Encoded:
    return encode_chunk(chunk, _WORKER_JOB)


def doc_hash(seed: int, key: str, index: int) -> int:
    digest = hashlib.blake2b(f"{seed}\x00{key}\x00{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def encode_chunk(chunk: Chunk, job: _Job) -> Encoded:
    ids = job.tokenizer.encode_batch(chunk.texts)
    sep = [] if job.eos_id is None else [job.eos_id]
    lengths = np.fromiter((len(x) + len(sep) for x in ids), np.int64, count=len(ids))
    tokens = np.fromiter(chain.from_iterable(x + sep for x in ids), job.dtype, count=int(lengths.sum()))
    hashes = np.fromiter((doc_hash(job.seed, chunk.key, chunk.first_doc + i) for i in range(len(ids))),
                         np.uint64, count=len(ids))
    if chunk.role == "val":
        is_val = np.ones(len(ids), bool)
    elif chunk.role == "train":
        is_val = np.zeros(len(ids), bool)
    else:
        is_val = hashes < np.uint64(job.val_threshold)
    return Encoded(tokens, lengths, hashes, is_val)


# ---- writing ----------------------------------------------------------------------------------------------------


class _SplitWriter:
    def __init__(self, folder: Path, split: str):
        self.final = {ext: folder / f"{split}.{ext}" for ext in ("bin", "idx")}
        self.tmp = {ext: folder / f".{split}.{ext}.tmp-{os.getpid()}" for ext in ("bin", "idx")}
        self.f = open(self.tmp["bin"], "wb")
        self.lengths: list[np.ndarray] = []
        self.n_tokens = 0
        self.n_docs = 0

    def add(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        if len(lengths):
            self.f.write(memoryview(np.ascontiguousarray(tokens)))
            self.lengths.append(lengths)
            self.n_tokens += int(lengths.sum())
            self.n_docs += len(lengths)

    def offsets(self) -> np.ndarray:
        lengths = np.concatenate(self.lengths) if self.lengths else np.zeros(0, np.int64)
        return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)

    def close(self) -> None:
        if not self.f.closed:
            self.f.close()
        self.offsets().tofile(self.tmp["idx"])

    def commit(self) -> None:
        for ext in ("bin", "idx"):
            os.replace(self.tmp[ext], self.final[ext])

    def discard(self) -> None:
        if not self.f.closed:
            self.f.close()
        for p in self.tmp.values():
            p.unlink(missing_ok=True)


def _move_one_to_val(train: _SplitWriter, val: _SplitWriter, doc: int, dtype) -> None:
    """Take train document `doc` out of train.bin into val.bin (only for corpora that drew no validation)."""
    train.f.close()
    off = train.offsets()
    a, b = int(off[doc]), int(off[doc + 1])
    # Streamed through a map, not read whole: a corpus of a few huge documents can land here too
    data = np.memmap(train.tmp["bin"], dtype=dtype, mode="r")
    val.add(data[a:b], np.array([b - a], np.int64))
    rest = train.tmp["bin"].with_name(train.tmp["bin"].name + "-rest")
    with open(rest, "wb") as f:
        for lo, hi in ((0, a), (b, len(data))):
            for i in range(lo, hi, 1 << 24):
                f.write(memoryview(np.ascontiguousarray(data[i : min(hi, i + (1 << 24))])))
    del data
    os.replace(rest, train.tmp["bin"])
    train.lengths = [np.delete(np.diff(off), doc)]
    train.n_tokens -= b - a
    train.n_docs -= 1


# ---- the pipeline -----------------------------------------------------------------------------------------------


@dataclass
class PrepareResult:
    out: Path
    manifest: dict
    seconds: float
    text_bytes: int

    @property
    def mb_per_s(self) -> float:
        return self.text_bytes / 1e6 / max(self.seconds, 1e-9)


def _chunks(sources: list[Source], text_field, doc_split, skips: Skips, stats: list[dict]) -> Iterator[Chunk]:
    for si, src in enumerate(sources):
        texts: list[str] = []
        nbytes = first = n = 0
        chunk_bytes = 0
        for text, nb in iter_documents(src, text_field, doc_split, skips):
            texts.append(text)
            nbytes += nb
            chunk_bytes += len(text)
            n += 1
            if chunk_bytes >= CHUNK_BYTES or len(texts) >= CHUNK_DOCS:
                yield Chunk(si, src.spec, first, src.role, texts, nbytes)
                texts, nbytes, chunk_bytes, first = [], 0, 0, n
        if texts:
            yield Chunk(si, src.spec, first, src.role, texts, nbytes)
        stats[si]["documents"] = n
        if src.is_file:
            stats[si]["sha256"] = file_sha256(src.spec)


def _encoded_in_order(chunks: Iterator[Chunk], job: _Job, workers: int) -> Iterator[tuple[Chunk, Encoded]]:
    if workers <= 1:
        for c in chunks:
            yield c, encode_chunk(c, job)
        return
    # Spawn, not fork: a forked child would inherit the tokenizers thread pool and torch state of the parent.
    # Results are taken in submission order from a bounded window, so memory stays flat on any corpus size
    # (Pool.imap would read the whole corpus ahead into its task queue).
    # ProcessPoolExecutor rather than Pool: a worker that dies (killed for memory, say) fails the run instead
    # of being replaced and waited on forever.
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(job,)) as pool:
        pending: collections.deque = collections.deque()
        try:
            for c in chunks:
                pending.append((c, pool.submit(_encode_in_worker, c)))
                if len(pending) >= 2 * workers + 1:
                    c0, fut = pending.popleft()
                    yield c0, fut.result()
            while pending:
                c0, fut = pending.popleft()
                yield c0, fut.result()
        except BrokenProcessPool:
            raise LmstackError(f"a tokenizing worker process died (out of memory?); try fewer --workers than "
                               f"{workers}") from None
        finally:
            for _, fut in pending:
                fut.cancel()


def prepare(
    inputs: Sequence[str],
    tokenizer,
    out,
    *,
    text_field: str = "text",
    doc_split: str | None = None,
    val_fraction: float = 0.01,
    val_inputs: Sequence[str] | None = None,
    seed: int = 0,
    workers: int | None = None,
    skip_bad: bool = False,
    eos: bool = True,
    progress: bool = True,
) -> PrepareResult:
    """Tokenise `inputs` into token shards in folder `out`; `tokenizer` is a Tokenizer or anything Tokenizer.load reads.

    With `val_inputs`, those sources are the validation split and `val_fraction` is not used.
    """
    if doc_split is not None and doc_split not in DOC_SPLITS:
        raise LmstackError(f"--doc-split {doc_split!r}: expected one of {', '.join(DOC_SPLITS)}")
    if not 0.0 <= val_fraction < 1.0:
        raise LmstackError(f"--val-fraction {val_fraction}: must be at least 0 and below 1")
    workers = min(4, os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise LmstackError(f"--workers {workers}: must be at least 1")
    if not inputs:
        raise LmstackError("no inputs given")

    tok_name = None
    if not isinstance(tokenizer, Tokenizer):
        tok_name = str(tokenizer)
        tokenizer = Tokenizer.load(tokenizer)
    eos_id = tokenizer.eos_id if eos else None
    if eos and eos_id is None:
        raise LmstackError(f"tokenizer {tok_name or ''}: has no eos token to separate documents; pass --no-eos")

    sources = resolve_inputs(inputs, role="train" if val_inputs else "auto")
    if val_inputs:
        train_keys = {s.spec for s in sources}
        vals = resolve_inputs(val_inputs, role="val")
        for s in vals:
            if s.spec in train_keys:
                raise LmstackError(f"{s.spec}: given both as an input and in --val-inputs")
        sources += vals
        val_fraction = 0.0

    vocab = tokenizer.vocab_size
    dtype = token_dtype(vocab)
    job = _Job(tokenizer, eos_id, dtype.str, seed, min(int(val_fraction * 2.0**64), 2**64 - 1))
    skips = Skips(skip_bad)
    stats = [{"path": s.spec, "format": s.fmt + (".gz" if s.gz else ""), "split": s.role,
              "bytes": os.path.getsize(s.spec) if s.is_file else None, "sha256": None,
              "documents": 0, "val_documents": 0, "tokens": 0, "skipped": 0} for s in sources]
    # A byte total is only meaningful when on-disk size is text size
    total = sum(st["bytes"] for st in stats) if all(s.fmt in ("txt", "md", "jsonl") and not s.gz
                                                    for s in sources) else None

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    writers = {s: _SplitWriter(folder, s) for s in SPLITS}
    best = (2**64, -1)  # (hash, train document) of the train document closest to being drawn for validation
    text_bytes = 0
    t0 = time.perf_counter()
    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1000, desc="tokenizing",
               disable=not progress, mininterval=0.5, smoothing=0.1)
    try:
        chunks = _chunks(sources, text_field, doc_split, skips, stats)
        for chunk, enc in _encoded_in_order(chunks, job, workers):
            if chunk.role == "auto" and (~enc.is_val).any():
                idx = np.flatnonzero(~enc.is_val)
                j = idx[np.argmin(enc.hashes[idx])]
                if int(enc.hashes[j]) < best[0]:
                    best = (int(enc.hashes[j]), writers["train"].n_docs + int(np.sum(~enc.is_val[:j])))
            per_token = np.repeat(enc.is_val, enc.lengths)
            writers["train"].add(enc.tokens[~per_token], enc.lengths[~enc.is_val])
            writers["val"].add(enc.tokens[per_token], enc.lengths[enc.is_val])
            st = stats[chunk.source]
            st["tokens"] += int(enc.lengths.sum())
            st["val_documents"] += int(enc.is_val.sum())
            text_bytes += chunk.nbytes
            bar.update(chunk.nbytes)
        bar.close()
        seconds = time.perf_counter() - t0

        train, val = writers["train"], writers["val"]
        if train.n_docs + val.n_docs == 0:
            raise LmstackError(f"no documents found in {', '.join(map(str, inputs))}")
        if val_inputs and val.n_docs == 0:
            raise LmstackError(f"--val-inputs {' '.join(map(str, val_inputs))}: no documents found")
        if val_fraction > 0 and val.n_docs == 0 and train.n_docs >= 2:
            # A tiny corpus may draw no validation document at all; evaluation still needs one
            _move_one_to_val(train, val, best[1], dtype)
            src_of = _source_of_train_doc(stats, best[1])
            if src_of is not None:
                stats[src_of]["val_documents"] += 1
        for w in writers.values():
            w.close()
        for st in stats:
            st["skipped"] = skips.per_source[st["path"]]

        manifest = {
            "format": FORMAT,
            "dtype": dtype.name,
            "vocab_size": vocab,
            "eos_id": eos_id,
            "eos_appended": eos_id is not None,
            "bos_prepended": bool(tokenizer.add_bos),
            # Absolute, so that training started from another directory still finds it
            "tokenizer": str(Path(tok_name).resolve()) if tok_name else str((folder / TOKENIZER_COPY).resolve()),
            "tokenizer_copy": TOKENIZER_COPY,
            "tokenizer_sha256": tokenizer_sha256(tokenizer),
            "splits": {s: {"tokens": w.n_tokens, "documents": w.n_docs} for s, w in writers.items()},
            "sources": stats,
            "val_fraction": val_fraction,
            "val_inputs": [str(v) for v in val_inputs] if val_inputs else None,
            "seed": seed,
            "text_field": text_field,
            "doc_split": doc_split,
            "skipped_total": skips.total,
            "skipped": skips.examples,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        # The old manifest goes first and the new one comes last: a run killed while renaming leaves a folder
        # without a manifest, which TokenDataset refuses, rather than a manifest over mismatched shards
        (folder / MANIFEST).unlink(missing_ok=True)
        # A copy travels with the shards: they are meaningless without the exact tokenizer that made them
        tokenizer.save(folder / TOKENIZER_COPY)
        for w in writers.values():
            w.commit()
        tmp = folder / f".{MANIFEST}.tmp-{os.getpid()}"
        tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, folder / MANIFEST)
    finally:
        bar.close()
        for w in writers.values():
            w.discard()
    return PrepareResult(folder, manifest, seconds, text_bytes)


def _source_of_train_doc(stats: list[dict], doc: int) -> int | None:
    """Which source train document `doc` came from, counting train documents source by source in order."""
    seen = 0
    for i, st in enumerate(stats):
        n_train = st["documents"] - st["val_documents"]
        if doc < seen + n_train:
            return i
        seen += n_train
    return None
