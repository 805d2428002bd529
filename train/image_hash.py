"""Fingerprints of image files: blake2b of the bytes (exact copies) and a 64-bit dHash of the pixels (near copies).

Used by the data audit (train/audit.py) and the splitter (train/split.py). Fingerprints are computed in
threads (PIL's decoder and hashlib release the GIL, and threads need no fork of a process that may hold
CUDA) and cached by (path, size, mtime_ns), so a resumed run reads them back instead of decoding again.
No torch here: `train/split.py --help` must stay light.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from core.fsio import write_json_atomic
from core.images import BadImage, decode_image
from core.workers import usable_cpus

NEAR_DISTANCE = 4  # dHash bits that may differ between near copies (re-encoded, resized, slightly edited)
# A flat or smoothly shaded image hashes to (almost) all zeros or all ones: its dHash says nothing about
# its content, so such images are matched by their bytes only, never as near copies of each other.
LOW_DETAIL_BITS = 8
CACHE_VERSION = 1
MAX_THREADS = 16


@dataclass(frozen=True)
class Fingerprint:
    digest: str  # blake2b-128 of the file's bytes, hex; "" when the file could not be read
    dhash: int | None  # None: the file is not a decodable image


def dhash(image: Image.Image) -> int:
    """64-bit difference hash: grey 9x8 box-filtered thumbnail, one bit per horizontal neighbour pair."""
    small = image.convert("L").resize((9, 8), Image.Resampling.BOX)
    px = list(small.getdata())
    bits = 0
    for row in range(8):
        for col in range(8):
            bits = (bits << 1) | (px[row * 9 + col] > px[row * 9 + col + 1])
    return bits


def fingerprint(path: str | os.PathLike) -> Fingerprint:
    try:
        data = Path(path).read_bytes()
    except OSError:
        return Fingerprint("", None)
    digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    try:
        return Fingerprint(digest, dhash(decode_image(data)))
    except BadImage:
        return Fingerprint(digest, None)


# ─── cache ─────────────────────────────────────────────────────────────────────────────────────


def _stat_key(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _read_cache(cache_file: Path | None) -> dict[str, list]:
    if cache_file is None or not cache_file.is_file():
        return {}
    try:
        d = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        return {}  # a damaged cache only costs time: everything is hashed again
    if not isinstance(d, dict) or d.get("version") != CACHE_VERSION or not isinstance(d.get("files"), dict):
        return {}
    return d["files"]


def fingerprints(
    paths: Sequence[str], cache_file: Path | None = None, workers: int | None = None
) -> tuple[list[Fingerprint], int]:
    """(fingerprint of each path, how many came from the cache). Rewrites the cache for exactly these paths."""
    cached = _read_cache(cache_file)
    keys = [_stat_key(p) for p in paths]
    out: list[Fingerprint | None] = [None] * len(paths)
    todo = []
    for i, (p, key) in enumerate(zip(paths, keys)):
        entry = cached.get(p)
        if key is not None and isinstance(entry, list) and len(entry) == 4 and entry[:2] == key:
            out[i] = Fingerprint(entry[2], entry[3])
        else:
            todo.append(i)
    n_threads = max(1, min(MAX_THREADS, workers or usable_cpus(), len(todo)))
    with ThreadPoolExecutor(n_threads) as pool:
        for i, fp in zip(todo, pool.map(fingerprint, [paths[i] for i in todo], chunksize=1)):
            out[i] = fp
    if cache_file is not None:
        files = {
            p: [*key, fp.digest, fp.dhash]
            for p, key, fp in zip(paths, keys, out)
            if key is not None and fp is not None and fp.digest
        }
        write_json_atomic(cache_file, {"version": CACHE_VERSION, "files": files})
    return out, len(paths) - len(todo)  # type: ignore[return-value]


# ─── matching ──────────────────────────────────────────────────────────────────────────────────


def informative(h: int | None) -> bool:
    return h is not None and LOW_DETAIL_BITS <= h.bit_count() <= 64 - LOW_DETAIL_BITS


def _bands(max_distance: int) -> list[tuple[int, int]]:
    """(shift, mask) of max_distance + 1 bit bands: two hashes within max_distance agree on at least one."""
    n = max_distance + 1
    edges = [round(64 * k / n) for k in range(n + 1)]
    return [(lo, (1 << (hi - lo)) - 1) for lo, hi in zip(edges, edges[1:])]


def exact_pairs(digests: Sequence[str]) -> list[tuple[int, int]]:
    """Every (i, j), i < j, of items with the same non-empty digest."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, d in enumerate(digests):
        if d:
            groups[d].append(i)
    return [(a, b) for g in groups.values() for k, a in enumerate(g) for b in g[k + 1 :]]


def near_pairs(hashes: Sequence[int | None], max_distance: int = NEAR_DISTANCE) -> dict[tuple[int, int], int]:
    """{(i, j): Hamming distance} for every pair of informative hashes within max_distance, i < j.

    Multi-index hashing: distinct hashes are bucketed by each of max_distance + 1 bit bands, and only
    hashes sharing a bucket are compared (pigeonhole: a pair within max_distance shares one), so the
    work grows with the number of real matches, not with the square of the data set."""
    by_hash: dict[int, list[int]] = defaultdict(list)
    for i, h in enumerate(hashes):
        if informative(h):
            by_hash[h].append(i)  # type: ignore[index]
    distinct = list(by_hash)
    close: dict[tuple[int, int], int] = {(u, u): 0 for u in range(len(distinct))}
    for shift, mask in _bands(max_distance):
        buckets: dict[int, list[int]] = defaultdict(list)
        for u, h in enumerate(distinct):
            buckets[(h >> shift) & mask].append(u)
        for bucket in buckets.values():
            for k, u in enumerate(bucket):
                for v in bucket[k + 1 :]:
                    d = (distinct[u] ^ distinct[v]).bit_count()
                    if d <= max_distance:
                        close[(u, v)] = d
    pairs: dict[tuple[int, int], int] = {}
    for (u, v), d in close.items():
        members_u, members_v = by_hash[distinct[u]], by_hash[distinct[v]]
        for a in members_u:
            for b in members_v:
                if a != b:
                    pairs[(min(a, b), max(a, b))] = d
    return pairs


def groups(n: int, pairs: Iterable[tuple[int, int]]) -> list[int]:
    """Union-find: the group id (smallest member index) of each of n items joined by `pairs`."""
    parent = list(range(n))

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return [root(i) for i in range(n)]
