"""--embeddings FILE.npy: the penultimate features (the classifier head's input) of every ok row, in row
order, as float32 [rows, dim], with the rows' paths in FILE.paths.json, for similarity search and clustering.

Features stream to a work file beside FILE while serve runs; FILE and its paths file appear whole at the
end (atomically), so an interrupted run leaves neither half-written.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np

from core.errors import UserError
from core.fsio import atomic_path, shown_as, write_text_atomic

CHUNK_ROWS = 65536


def paths_file(npy: Path) -> Path:
    return npy.with_name(npy.stem + ".paths.json")


class EmbeddingWriter:
    def __init__(self, path: Path):
        self.path, self.work = path, path.with_name(f".{path.name}.rows")
        self.paths: list[str] = []
        self.dim: int | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.fh = open(self.work, "wb")  # noqa: SIM115 (closed in finish/abort)
        except OSError as exc:
            raise UserError(
                f"cannot write {path} ({exc.strerror or exc}); choose another --embeddings"
            ) from None

    def add(self, paths: list[str], features: np.ndarray) -> None:
        features = np.ascontiguousarray(features, dtype=np.float32).reshape(len(paths), -1)
        self.dim = self.dim or features.shape[1]
        with shown_as(self.work, self.path):  # a full disk names --embeddings, not our .rows work file
            self.fh.write(features.tobytes())
        self.paths.extend(paths)

    def finish(self) -> None:
        """FILE.npy (rows in the order written) and FILE.paths.json, each atomically; the work file goes."""
        with shown_as(self.work, self.path):
            self.fh.close()  # writes what is still buffered
        n, dim = len(self.paths), self.dim or 0
        raw = np.memmap(self.work, dtype=np.float32, mode="r", shape=(n, dim)) if n and dim else None
        with atomic_path(self.path, suffix=".npy") as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, dim))
            for start in range(0, n, CHUNK_ROWS):
                out[start : start + CHUNK_ROWS] = raw[start : start + CHUNK_ROWS]
            out.flush()
            del out
        del raw
        write_text_atomic(paths_file(self.path), json.dumps(self.paths, ensure_ascii=False) + "\n")
        self.work.unlink(missing_ok=True)

    def abort(self) -> None:
        """The work file goes, its buffered tail unwritten: after a failed write (a full disk) flushing it
        would fail again and hide the first error, which names the file."""
        with contextlib.suppress(OSError, ValueError):
            self.fh.raw.close()  # the raw file, so the buffer's flush has nowhere to go (no fd to reuse)
            self.fh.close()
        self.work.unlink(missing_ok=True)
