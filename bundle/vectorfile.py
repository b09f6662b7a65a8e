"""Row-addressed I/O on a 2-D ``.npy`` file without memory-mapping it.

Builds write and scan vectors files far larger than RAM. A memmap would do
the I/O, but every page it touches counts in the builder's resident set
until the kernel reclaims it, so a 1M x 768 build would look (and, under
cgroup limits, be charged) like it holds all vectors. Plain ``pread`` /
``pwrite`` keep only the chunk in hand in process memory; the file stays a
standard ``.npy`` that servers memory-map for rescoring.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import numpy.typing as npt


def create_npy(path: os.PathLike[str] | str, n: int, dim: int, dtype: Any) -> None:
    """Create a zero-filled (sparse) ``.npy`` of shape (n, dim) without touching its pages."""
    descr = np.lib.format.dtype_to_descr(np.dtype(dtype))
    header = {"descr": descr, "fortran_order": False, "shape": (n, dim)}
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        try:
            f.truncate(f.tell() + n * dim * np.dtype(dtype).itemsize)
        except OSError as exc:  # a file-size limit: name the file
            raise OSError(exc.errno, exc.strerror, os.fspath(path)) from exc


class VectorFile:
    """An (n, dim) ``.npy`` read and written by row ranges; slices return fresh arrays.

    Supports what variant builders use from an array: ``shape``, ``ndim``,
    ``dtype``, ``len``, ``vf[a:b]`` and ``vf[int_array]``.
    """

    def __init__(self, path: os.PathLike[str] | str, writable: bool = False) -> None:
        self.path = os.fspath(path)
        self._f = open(self.path, "r+b" if writable else "rb")  # closed in close()
        version = np.lib.format.read_magic(self._f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(self._f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(self._f)
        if fortran or len(shape) != 2:
            self._f.close()
            raise ValueError(f"{self.path}: expected a C-ordered 2-D array, got shape {shape}")
        self.offset = self._f.tell()
        self.shape: tuple[int, int] = (int(shape[0]), int(shape[1]))
        self.dtype = np.dtype(dtype)
        self.ndim = 2
        self._row_bytes = self.shape[1] * self.dtype.itemsize
        self._fd = self._f.fileno()

    def __len__(self) -> int:
        return self.shape[0]

    def __enter__(self) -> VectorFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read_block(self, start: int, stop: int) -> npt.NDArray[Any]:
        start, stop = max(0, start), min(stop, self.shape[0])
        if stop <= start:
            return np.empty((0, self.shape[1]), dtype=self.dtype)
        out = np.empty((stop - start, self.shape[1]), dtype=self.dtype)
        view = out.data.cast("B")  # read straight into the array: no bytes copy
        offset = self.offset + start * self._row_bytes
        done = 0
        while done < len(view):
            got = os.preadv(self._fd, [view[done:]], offset + done)
            if got <= 0:
                raise OSError(f"{self.path}: short read at rows {start}:{stop}")
            done += got
        return out

    def read_rows(self, rows: npt.NDArray[np.integer[Any]]) -> npt.NDArray[Any]:
        """Rows in the order given, reading each contiguous run once."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((rows.size, self.shape[1]), dtype=self.dtype)
        order = np.argsort(rows, kind="stable")
        for lo, hi in _runs(rows[order]):
            block = self.read_block(int(rows[order[lo]]), int(rows[order[hi - 1]]) + 1)
            out[order[lo:hi]] = block
        return out

    def write_block(self, start: int, values: npt.NDArray[Any]) -> None:
        data = np.ascontiguousarray(values, dtype=self.dtype)
        if data.ndim != 2 or data.shape[1] != self.shape[1] or start + len(data) > self.shape[0]:
            raise ValueError(f"{self.path}: cannot write {data.shape} at row {start}")
        payload = memoryview(data.tobytes())
        offset = self.offset + start * self._row_bytes
        done = 0
        try:
            while done < len(payload):  # a short write (disk filling up) is retried: it raises
                done += os.pwrite(self._fd, payload[done:], offset + done)
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, self.path) from exc

    def write_rows(self, rows: npt.NDArray[np.integer[Any]], values: npt.NDArray[Any]) -> None:
        """Write ``values[i]`` to row ``rows[i]``, one syscall per contiguous run of rows."""
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")
        for lo, hi in _runs(rows[order]):
            self.write_block(int(rows[order[lo]]), values[order[lo:hi]])

    def flush(self) -> None:
        """Make written rows durable (a checkpoint must not outrun its data)."""
        self._f.flush()
        os.fdatasync(self._fd)

    def __getitem__(self, key: slice | npt.NDArray[np.integer[Any]]) -> npt.NDArray[Any]:
        if isinstance(key, slice):
            start, stop, step = key.indices(self.shape[0])
            if step != 1:
                raise IndexError("VectorFile slices must have step 1")
            return self.read_block(start, stop)
        return self.read_rows(np.asarray(key))

    def close(self) -> None:
        self._f.close()


def _runs(sorted_rows: npt.NDArray[np.integer[Any]]) -> list[tuple[int, int]]:
    """[lo, hi) index ranges of consecutive values in an ascending array."""
    if sorted_rows.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(sorted_rows) != 1) + 1
    edges = [0, *breaks.tolist(), int(sorted_rows.size)]
    return list(zip(edges[:-1], edges[1:], strict=True))
