"""The bench's data: made once on tmpfs, uploaded once to one local S3 server, read raw.

The two datasets, under one bucket:

    big/model.safetensors              one --size file shaped like a model's weights: a
                                       safetensors header naming a transformer's tensors,
                                       then random bytes (`make_model_file`)
    small/dNN/sNN/fNNNN.bin            --small-files files of 4-64 KiB, 100 per directory

The SeaweedFS server keeps its volumes on the same tmpfs, so dropping the page cache never
turns the S3 reference into a disk benchmark, and every S3 reader (eddy, the peers, the raw
client) meets the same server in the same state.
"""

from __future__ import annotations

import contextlib
import os
import random
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import obstore
from obstore.store import S3Store

from tests.support.model_files import safetensors_header
from tests.support.s3server import S3Server

from .measure import Timing

BUCKET = "bench"
BIG = "big"
SMALL = "small"
BIG_NAME = "model.safetensors"
RANGE = 8 << 20  # the raw reference's ranged GETs
WORKERS = 8  # parallel requests of the raw reference
UPLOAD_WORKERS = 16  # parallel PUTs of the small files (setup, untimed)
UPLOAD_PART = 32 << 20  # the big file's multipart upload parts
SMALL_MIN, SMALL_MAX = 4 << 10, 64 << 10
FILES_PER_DIR = 100
DIRS_PER_DIR = 10


LAYERS = 16  # of the model file's transformer
# Each layer's tensors, in units: attention q, k, v, o; MLP gate, up, down (a 2.75x MLP).
LAYER_TENSORS = {"self_attn.q_proj": 4, "self_attn.k_proj": 4, "self_attn.v_proj": 4,
                 "self_attn.o_proj": 4, "mlp.gate_proj": 11, "mlp.up_proj": 11,
                 "mlp.down_proj": 11}
NORM_BYTES = 16 << 10  # each layer's two norms, the model's last one


def model_tensors(size: int) -> dict[str, int]:
    """Tensor names and byte sizes of a LAYERS-layer transformer whose safetensors file
    (header included) is `size` bytes: embeddings and head 32 units each, the last tensor
    taking what rounding left over."""
    units = 2 * 32 + LAYERS * sum(LAYER_TENSORS.values())
    unit = max((size - (2 * LAYERS + 1) * NORM_BYTES - (64 << 10)) // units // 4 * 4, 4)
    tensors = {"model.embed_tokens.weight": 32 * unit}
    for i in range(LAYERS):
        layer = f"model.layers.{i}."
        tensors[layer + "input_layernorm.weight"] = NORM_BYTES
        tensors.update({f"{layer}{name}.weight": n * unit for name, n in LAYER_TENSORS.items()})
        tensors[layer + "post_attention_layernorm.weight"] = NORM_BYTES
    tensors["model.norm.weight"] = NORM_BYTES
    tensors["lm_head.weight"] = 0
    for _ in range(3):  # the header's length depends on the sizes it names
        rest = size - len(safetensors_header(tensors)) - sum(tensors.values())
        tensors["lm_head.weight"] += rest
    if tensors["lm_head.weight"] < 0 or rest:
        raise ValueError(f"no model file of {size} bytes")
    return tensors


def make_model_file(path: str, size: int) -> int:
    """A safetensors file of `size` bytes (`model_tensors`); how many tensors it holds."""
    tensors = model_tensors(size)
    make_big_file(path, size, safetensors_header(tensors))
    return len(tensors)


def make_big_file(path: str, size: int, head: bytes = b"") -> None:
    """`head`, then random bytes up to `size`: incompressible and with no two blocks alike.

    One 64 MiB random buffer, written rotated by a different odd offset each time: a quarter
    of the time os.urandom would take for every byte, on a machine where that is seconds.
    """
    pattern = os.urandom(min(size, 64 << 20)) if size else b""
    with open(path, "wb") as f:
        f.write(head)
        left, turn = size - len(head), 0
        while left:
            cut = (turn * 1_000_003) % len(pattern)
            chunk = pattern[cut:] + pattern[:cut]
            f.write(chunk[:left])
            left -= min(left, len(chunk))
            turn += 1


def small_names(count: int) -> Iterator[str]:
    """dNN/sNN/fNNNN.bin: FILES_PER_DIR files per leaf, DIRS_PER_DIR leaves per top dir."""
    for i in range(count):
        leaf = i // FILES_PER_DIR
        yield f"d{leaf // DIRS_PER_DIR:02d}/s{leaf % DIRS_PER_DIR:02d}/f{i:05d}.bin"


def make_small_tree(root: str, count: int, seed: int = 6) -> int:
    """Write `count` files of 4-64 KiB (sizes from a seeded generator); their total bytes."""
    sizes = random.Random(seed)
    total = 0
    for name in small_names(count):
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        n = sizes.randint(SMALL_MIN, SMALL_MAX)
        with open(path, "wb") as f:
            f.write(os.urandom(n))
        total += n
    return total


@contextlib.contextmanager
def _temp_root(path: str) -> Iterator[None]:
    """Make `tempfile` create its directories under `path` (S3Server takes no data dir)."""
    old = tempfile.tempdir
    tempfile.tempdir = path
    try:
        yield
    finally:
        tempfile.tempdir = old


class Source:
    """The datasets on tmpfs and on one S3 server; `close()` stops the server."""

    def __init__(self, workdir: str, size: int, small_files: int):
        self.local = os.path.join(workdir, "src")
        self.big_path = os.path.join(self.local, BIG, BIG_NAME)
        self.small_root = os.path.join(self.local, SMALL)
        self.big_bytes = size
        self.small_files = small_files
        os.makedirs(os.path.dirname(self.big_path))
        os.makedirs(self.small_root)
        self.tensors = make_model_file(self.big_path, size)
        self.small_bytes = make_small_tree(self.small_root, small_files)
        self.s3 = S3Server()
        with _temp_root(workdir):
            self.s3.start()
        try:
            self.s3.create_bucket(BUCKET)
            self.store = self._client()
            self._upload()
        except BaseException:
            self.s3.stop()
            raise

    def close(self) -> None:
        self.s3.stop()

    @property
    def endpoint(self) -> str:
        return self.s3.endpoint

    @property
    def secrets(self) -> dict[str, str]:
        return self.s3.secrets

    def _client(self) -> S3Store:
        """The client eddy's S3 source uses, configured as a user would."""
        return S3Store(BUCKET, endpoint=self.s3.endpoint, region="us-east-1",
                       access_key_id=self.s3.access_key, secret_access_key=self.s3.secret_key,
                       client_options={"allow_http": True})

    def _upload(self) -> None:
        obstore.put(self.store, f"{BIG}/{BIG_NAME}", Path(self.big_path),
                    chunk_size=UPLOAD_PART, max_concurrency=8)
        root = Path(self.small_root)
        paths = [p for p in sorted(root.rglob("*")) if p.is_file()]

        def put(path: Path) -> None:
            obstore.put(self.store, f"{SMALL}/{path.relative_to(root).as_posix()}",
                        path.read_bytes())

        with ThreadPoolExecutor(UPLOAD_WORKERS) as pool:
            list(pool.map(put, paths))

    # -- the S3 reference: the same client, in parallel, no filesystem ---------------------

    def raw_big(self) -> Timing:
        """Parallel 8 MiB ranged GETs of the big file; bytes discarded."""
        key = f"{BIG}/{BIG_NAME}"
        size = self.big_bytes

        def get(offset: int) -> int:
            n = min(RANGE, size - offset)
            return len(obstore.get_range(self.store, key, start=offset, length=n))

        start = time.perf_counter()
        with ThreadPoolExecutor(WORKERS) as pool:
            total = sum(pool.map(get, range(0, size, RANGE)))
        return Timing(time.perf_counter() - start, total)

    def raw_small(self) -> Timing:
        """LIST the small files, then GET every one of them in parallel."""

        def get(key: str) -> int:
            return len(obstore.get(self.store, key).bytes())

        start = time.perf_counter()
        keys = [meta["path"] for batch in obstore.list(self.store, prefix=f"{SMALL}/")
                for meta in batch]
        with ThreadPoolExecutor(WORKERS) as pool:
            total = sum(pool.map(get, keys))
        return Timing(time.perf_counter() - start, total, len(keys))
