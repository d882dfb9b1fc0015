"""``FileList``: a compact, immutable sequence of file paths (a ``FileSplit``'s files)."""

from __future__ import annotations

import operator
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, SupportsIndex, overload

import numpy as np
from torch import Tensor

__all__ = ["ITER_CHUNK", "FileList"]

ITER_CHUNK = 65536  # files a FileList decodes at a time while iterating


def _index_dtype(n: int) -> type[np.unsignedinteger[Any]]:
    """The smallest unsigned integer type that numbers ``n`` things (0 .. n - 1)."""
    for kind in (np.uint8, np.uint16, np.uint32):
        if n <= np.iinfo(kind).max + 1:
            return kind
    return np.uint64


def _frozen(array: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """``array`` read-only (a read-only view when it is writeable, so its owner keeps it)."""
    if array.flags.writeable:
        array = array.view()
        array.flags.writeable = False
    return array


class FileList(Sequence[Path]):
    """An immutable sequence of file paths (a ``FileSplit``'s files), stored compactly: the
    folders once (``dirs``, a tuple of ``Path``), and per file the index of its folder
    (``uint8``/``uint16``/``uint32``, the smallest that numbers the folders) and its
    ``os.fsencode``-d name in one fixed-width numpy bytes array (``S`` dtype). ImageNet's
    1.28 M training files take about 28 MB this way, where a tuple of ``Path`` s takes about
    400 MB; the arrays pickle as two buffers, and a process reading them touches no per-file
    Python object (so DataLoader workers that fork do not copy the list page by page).

    ``files[i]`` is the ``Path`` (``dirs[k] / name``, as built); ``encoded(i)`` its
    ``os.fsencode``; ``take(index)`` (positions: a tensor, an array or a list of ints) and
    slices are new ``FileList`` s sharing ``dirs``; ``==`` compares the paths, in order.
    ``from_paths(paths)`` builds one from any paths, ``concat(lists)`` joins several."""

    __slots__ = ("_dir_of", "_dirs", "_names", "_prefixes")

    def __init__(
        self,
        dirs: Sequence[Path],
        dir_of: np.ndarray[Any, Any],
        names: np.ndarray[Any, Any],
    ) -> None:
        """``dirs``: the folders; ``dir_of``: per file the index in ``dirs`` of its folder
        (unsigned integers); ``names``: per file its encoded name (bytes, ``S`` dtype)."""
        dir_of, names = np.asarray(dir_of), np.asarray(names)
        if dir_of.ndim != 1 or names.ndim != 1 or len(dir_of) != len(names):
            raise ValueError(
                f"FileList needs one folder index and one name per file, got {dir_of.shape} "
                f"and {names.shape}"
            )
        if names.dtype.kind != "S" or dir_of.dtype.kind != "u":
            raise ValueError(
                f"FileList needs unsigned folder indices and bytes names, got {dir_of.dtype} "
                f"and {names.dtype}"
            )
        self._dirs = tuple(Path(d) for d in dirs)
        if len(dir_of) and int(dir_of.max()) >= len(self._dirs):
            raise ValueError(f"FileList: a folder index is not below {len(self._dirs)}")
        self._dir_of, self._names = _frozen(dir_of), _frozen(names)
        # what a name is appended to for its encoded path: b"/data/train/cat/" ("." gives b"")
        self._prefixes = tuple(os.fsencode(d / "x")[:-1] for d in self._dirs)

    @classmethod
    def from_paths(cls, paths: Iterable[str | os.PathLike[str]]) -> FileList:
        """The paths, in order, as a ``FileList`` (folders in order of first appearance)."""
        where: dict[str, int] = {}  # a folder as str(path.parent) ("" for "."), its index
        dir_of: list[int] = []
        names: list[bytes] = []
        for item in paths:
            # the normalised path split at its last separator: (parent, name) as Path has them
            folder, name = os.path.split(str(item if isinstance(item, Path) else Path(item)))
            dir_of.append(where.setdefault(folder, len(where)))
            names.append(os.fsencode(name))
        return cls(
            tuple(Path(folder) for folder in where),
            np.array(dir_of, dtype=_index_dtype(len(where))),
            np.array(names, dtype="S") if names else np.empty(0, dtype="S1"),
        )

    @classmethod
    def concat(cls, lists: Sequence[FileList]) -> FileList:
        """The files of ``lists``, one after the other, in one ``FileList``."""
        if len(lists) == 1:
            return lists[0]
        where: dict[Path, int] = {}
        for part in lists:
            for d in part.dirs:
                where.setdefault(d, len(where))
        kind = _index_dtype(len(where))
        dir_of = [
            np.array([where[d] for d in part.dirs], dtype=kind)[part._dir_of]
            if part.dirs
            else np.empty(0, dtype=kind)
            for part in lists
        ]
        names = [part._names for part in lists]
        return cls(
            tuple(where),
            np.concatenate(dir_of) if dir_of else np.empty(0, dtype=kind),
            np.concatenate(names) if names else np.empty(0, dtype="S1"),
        )

    @property
    def dirs(self) -> tuple[Path, ...]:
        """The folders the files are in (possibly more: a subset keeps its parent's)."""
        return self._dirs

    @property
    def nbytes(self) -> int:
        """Bytes of the per-file arrays (the folders, held once, not counted)."""
        return int(self._dir_of.nbytes + self._names.nbytes)

    def __len__(self) -> int:
        """Number of files."""
        return len(self._names)

    @overload
    def __getitem__(self, index: SupportsIndex) -> Path: ...

    @overload
    def __getitem__(self, index: slice) -> FileList: ...

    def __getitem__(self, index: SupportsIndex | slice) -> Path | FileList:
        """The ``Path`` of file ``index`` (an ``IndexError`` out of range), or a slice's
        ``FileList``."""
        if isinstance(index, slice):
            return self._with(self._dir_of[index].copy(), self._names[index].copy())
        i = operator.index(index)
        name: bytes = self._names[i]
        return self._dirs[int(self._dir_of[i])] / os.fsdecode(name)

    def encoded(self, index: SupportsIndex) -> bytes:
        """``os.fsencode(self[index])``, without making the ``Path``."""
        i = operator.index(index)
        return self._prefixes[int(self._dir_of[i])] + bytes(self._names[i])

    def __iter__(self) -> Iterator[Path]:
        """The paths in order (decoded a chunk at a time)."""
        dirs = self._dirs
        return (dirs[k] / os.fsdecode(name) for k, name in self._rows())

    def take(self, index: Tensor | np.ndarray[Any, Any] | Sequence[int]) -> FileList:
        """The files at positions ``index`` (integers; negative ones count from the end), in
        that order, as a new ``FileList`` that shares the folders."""
        rows = np.asarray(index.cpu() if isinstance(index, Tensor) else index)
        if rows.size == 0:
            rows = rows.astype(np.intp)
        if rows.dtype.kind not in "iu" or rows.ndim != 1:
            raise TypeError(
                f"FileList.take needs 1-D integer positions, got {rows.dtype} {rows.shape}"
            )
        return self._with(self._dir_of[rows], self._names[rows])

    def __eq__(self, other: object) -> bool:
        """Whether ``other`` is a ``FileList`` of the same paths in the same order."""
        if not isinstance(other, FileList):
            return NotImplemented
        if self is other:
            return True
        if len(self) != len(other):
            return False
        if self._dirs == other._dirs:
            return bool(
                np.array_equal(self._dir_of, other._dir_of)
                and np.array_equal(self._names, other._names)
            )
        return all(a == b for a, b in zip(self._encoded_iter(), other._encoded_iter()))

    def __hash__(self) -> int:
        """A hash of the length and the first and last paths (equal lists hash alike)."""
        ends = (self.encoded(0), self.encoded(-1)) if len(self) else ()
        return hash((len(self), *ends))

    def __repr__(self) -> str:
        """Short description: size, folders, first file."""
        first = f", first={self[0]}" if len(self) else ""
        return f"FileList(n={len(self)}, dirs={len(self._dirs)}{first})"

    def __reduce__(self) -> tuple[type[FileList], tuple[object, ...]]:
        """Pickled as its folders and its two arrays (one buffer each)."""
        return FileList, (self._dirs, self._dir_of, self._names)

    def _with(self, dir_of: np.ndarray[Any, Any], names: np.ndarray[Any, Any]) -> FileList:
        """A FileList of these rows that shares this one's folders."""
        out = FileList.__new__(FileList)
        out._dirs, out._prefixes = self._dirs, self._prefixes
        out._dir_of, out._names = _frozen(dir_of), _frozen(names)
        return out

    def _encoded_iter(self) -> Iterator[bytes]:
        prefixes = self._prefixes
        return (prefixes[k] + name for k, name in self._rows())

    def _rows(self) -> Iterator[tuple[int, bytes]]:
        """(folder index, encoded name) of every file in order, a chunk at a time."""
        for start in range(0, len(self), ITER_CHUNK):
            stop = start + ITER_CHUNK
            yield from zip(self._dir_of[start:stop].tolist(), self._names[start:stop].tolist())
