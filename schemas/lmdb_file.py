"""LMDB's on-disk layout, checked without liblmdb before liblmdb reads the file.

liblmdb memory-maps a store's LMDB files (its parts ``graphs.mdb`` and ``labels-<set>.mdb``, or
a single-file store's ``data.mdb``) and trusts them, and py-lmdb touches every page of a value
before returning it: a truncated file, or a page whose node offsets or value sizes point past
the end of the file, makes a read touch unmapped file pages and the process dies of
``SIGBUS`` (no exception, no message). :class:`LmdbTree` reads what liblmdb would trust with
ordinary ``pread`` calls (which cannot crash) and refuses the file with
:class:`~schemas.manifest.StoreError` when it is inconsistent. In LMDB's documented layout
(``lmdb.h`` / ``mdb.c`` of LMDB 0.9, 64-bit), it checks

- at open, the two meta pages (page 0 and page 1, ``MDB_meta`` after the 16-byte page header:
  magic ``0xBEEFC0DE``, data version 1, page size, ``mm_last_pg``, ``mm_txnid``): liblmdb uses
  the one with the larger ``txnid``, and the file must hold its ``(mm_last_pg + 1) · page_size``
  bytes; then every branch page of the main tree (reached from that meta's root): page type,
  node offsets and key sizes inside the page, child page numbers within ``mm_last_pg``, each
  page reached once, depth at most 32 (liblmdb's cursor stack), and separator keys strictly
  increasing in tree order, so the leaf liblmdb's binary search reaches for a key is the one
  :meth:`LmdbTree.leaf_of` finds by bisection;
- before a key is first looked up in a leaf page (:meth:`LmdbTree.check_key`), that leaf:
  node offsets, keys and inline values inside the page, and every value stored in overflow
  pages within the file.

(:meth:`LmdbTree.check_all` checks every leaf, before a cursor walks the whole tree.) Then
every byte liblmdb reads for a lookup lies inside the file; damage inside values is left
to the records' checksums. A 1.5 M-key store has ~100 branch pages (checked at open, a few
milliseconds) and ~10,000 leaves (each checked once per process, ~0.1 ms, when first used).
"""

from __future__ import annotations

import bisect
import os
import struct
from pathlib import Path

from fingerprint_pretrain.schemas.manifest import StoreError

__all__ = ["LmdbTree"]

_MAGIC = 0xBEEFC0DE
_DATA_VERSION = 1
_PAGE_HEADER = 16
_NODE_HEADER = 8
_P_BRANCH, _P_LEAF, _P_OVERFLOW, _P_META = 0x01, 0x02, 0x04, 0x08
_F_BIGDATA = 0x01
_P_INVALID = (1 << 64) - 1
_MAX_DEPTH = 32  # liblmdb's CURSOR_STACK


class _Damaged(Exception):
    """Internal: a structural inconsistency, turned into one StoreError naming the file."""


def _meta(fd: int, offset: int, index: int) -> tuple[int, int, int, int, int, int]:
    """Parse meta page ``index`` at ``offset``: (page size, last page, txnid, main root,
    main depth, main flags)."""
    page = os.pread(fd, 160, offset)
    if len(page) < 160:
        raise _Damaged(f"meta page {index} is cut off")
    pgno, flags = struct.unpack_from("<QxxH", page, 0)
    magic, version = struct.unpack_from("<II", page, 16)
    if magic != _MAGIC or pgno != index or not flags & _P_META:
        raise _Damaged(f"meta page {index} is not an LMDB meta page")
    if version != _DATA_VERSION:
        raise _Damaged(f"meta page {index}: unknown LMDB data version {version}")
    (page_size,) = struct.unpack_from("<I", page, 40)  # FREE_DBI's md_pad holds the page size
    _, main_flags, main_depth = struct.unpack_from("<IHH", page, 88)
    (main_root,) = struct.unpack_from("<Q", page, 128)
    last_page, txnid = struct.unpack_from("<QQ", page, 136)
    if page_size < 512 or page_size > 65536 or page_size & (page_size - 1):
        raise _Damaged(f"meta page {index}: impossible page size {page_size}")
    return page_size, last_page, txnid, main_root, main_depth, main_flags


def _nodes(page: bytes, pgno: int, page_size: int) -> list[tuple[int, int, int, int, int]]:
    """(offset, lo, hi, flags, key size) of every node of a branch or leaf page, each node
    header and key checked to lie inside the page."""
    lower, upper = struct.unpack_from("<HH", page, 12)
    if not (_PAGE_HEADER <= lower <= upper <= page_size) or (lower - _PAGE_HEADER) % 2:
        raise _Damaged(f"page {pgno}: bad bounds lower={lower} upper={upper}")
    nodes = []
    for (ptr,) in struct.iter_unpack("<H", page[_PAGE_HEADER:lower]):
        if not upper <= ptr <= page_size - _NODE_HEADER:
            raise _Damaged(f"page {pgno}: node offset {ptr} outside [{upper}, {page_size})")
        lo, hi, flags, ksize = struct.unpack_from("<HHHH", page, ptr)
        if ptr + _NODE_HEADER + ksize > page_size:
            raise _Damaged(f"page {pgno}: key of {ksize} bytes runs past the page")
        nodes.append((ptr, lo, hi, flags, ksize))
    return nodes


def _check_leaf(page: bytes, pgno: int, page_size: int, last_page: int) -> None:
    """Check a leaf page's nodes and that every value lies inside the file."""
    extent = (last_page + 1) * page_size
    for ptr, lo, hi, flags, ksize in _nodes(page, pgno, page_size):
        size = lo | hi << 16
        data = ptr + _NODE_HEADER + ksize
        if flags == _F_BIGDATA:
            if data + 8 > page_size:
                raise _Damaged(f"page {pgno}: overflow pointer runs past the page")
            (overflow,) = struct.unpack_from("<Q", page, data)
            end = overflow * page_size + _PAGE_HEADER + size
            if not 2 <= overflow <= last_page or end > extent:
                raise _Damaged(
                    f"page {pgno}: a value of {size:,} bytes in overflow page {overflow} runs "
                    f"past the data, which ends at byte {extent:,}"
                )
        elif flags == 0:
            if data + size > page_size:
                raise _Damaged(f"page {pgno}: value of {size} bytes runs past the page")
        else:
            raise _Damaged(f"page {pgno}: unexpected node flags {flags:#x}")


class LmdbTree:
    """One snapshot of an LMDB file, checked as the module docstring says.

    Args:
        data_file: path of the file (a part, or ``data.mdb``).
        store: the store directory, named in errors.

    Attributes:
        page_size: bytes per page.
        last_page: ``mm_last_pg`` of the meta liblmdb will use.
        txnid: that meta's transaction id (a reader's snapshot must have the same).
        extent: ``(last_page + 1) · page_size``, bytes.

    Raises:
        StoreError: the file is missing, truncated, or its meta or branch pages are damaged.
    """

    def __init__(self, data_file: str | os.PathLike, store: str | os.PathLike):
        self.path = Path(data_file)
        self.store = str(store)
        try:
            self._fd = os.open(self.path, os.O_RDONLY)
        except OSError as err:
            raise StoreError(f"{store}: cannot read {self.path.name}: {err.strerror}") from None
        try:
            self._open()
        except BaseException:
            self.close()
            raise
        self._checked: set[int] = set()

    def _open(self) -> None:
        file_size = os.fstat(self._fd).st_size
        name = self.path.name
        if file_size < 160:
            raise StoreError(
                f"{self.store}: {name} is truncated ({file_size} bytes: too short for LMDB's "
                f"meta pages)"
            )
        try:
            first = _meta(self._fd, 0, 0)
            if file_size < 2 * first[0]:
                raise StoreError(
                    f"{self.store}: {name} is truncated ({file_size} bytes: too short for "
                    f"LMDB's two meta pages)"
                )
            second = _meta(self._fd, first[0], 1)
            if second[0] != first[0]:
                raise _Damaged(f"meta pages disagree on the page size ({first[0]}, {second[0]})")
            page_size, last_page, txnid, root, _depth, flags = (
                first if first[2] >= second[2] else second
            )
            self.page_size, self.last_page, self.txnid = page_size, last_page, txnid
            self.extent = (last_page + 1) * page_size
            if self.extent > file_size:
                raise StoreError(
                    f"{self.store}: {name} is truncated ({file_size:,} bytes; its last page "
                    f"{last_page} ends at byte {self.extent:,})"
                )
            if flags:
                raise _Damaged(f"main tree flags {flags:#x} (stores use none)")
            self._keys, self._leaves = ([], []) if root == _P_INVALID else self._walk(root)
        except _Damaged as why:
            raise StoreError(f"{self.store}: {name} is damaged ({why})") from None

    def _read(self, pgno: int) -> bytes:
        return os.pread(self._fd, self.page_size, pgno * self.page_size)

    def _walk(self, root: int) -> tuple[list[bytes], list[int]]:
        """Check every branch page; return the leaves in key order with, for each, the
        smallest key routed to it (the first leaf's is ``b""``)."""
        seen: set[int] = set()
        keys: list[bytes] = []
        leaves: list[int] = []
        # depth-first, in key order: (page, smallest key routed to it, depth)
        stack = [(root, b"", 0)]
        while stack:
            pgno, low, depth = stack.pop()
            if not 2 <= pgno <= self.last_page or pgno in seen:
                raise _Damaged(f"page {pgno} reached twice or beyond page {self.last_page}")
            if depth >= _MAX_DEPTH:
                raise _Damaged(f"tree deeper than {_MAX_DEPTH} levels")
            seen.add(pgno)
            page = self._read(pgno)
            (flags,) = struct.unpack_from("<10xH", page)
            if flags == _P_LEAF:
                if leaves and low <= keys[-1]:
                    raise _Damaged(f"page {pgno}: separator keys out of order")
                keys.append(low)
                leaves.append(pgno)
                continue
            if flags != _P_BRANCH:
                raise _Damaged(f"page {pgno}: type {flags:#x} where a tree page belongs")
            children = []
            for k, (ptr, lo, hi, high, ksize) in enumerate(_nodes(page, pgno, self.page_size)):
                # node 0's key is never compared (it routes everything below node 1's)
                key = low if k == 0 else page[ptr + _NODE_HEADER : ptr + _NODE_HEADER + ksize]
                children.append((lo | hi << 16 | high << 32, key, depth + 1))
            if not children:
                raise _Damaged(f"page {pgno}: branch page without nodes")
            stack.extend(reversed(children))
        return keys, leaves

    def leaf_of(self, key: bytes) -> int | None:
        """The leaf page a lookup of ``key`` reaches (None for an empty tree)."""
        if not self._leaves:
            return None
        return self._leaves[max(bisect.bisect_right(self._keys, key) - 1, 0)]

    def check_key(self, key: bytes, where: str | None = None) -> None:
        """Check the leaf a lookup of ``key`` reaches, once; afterwards liblmdb may look
        ``key`` up safely.

        Raises:
            StoreError: that leaf is damaged (message starts with ``where``, default the
                store).
        """
        pgno = self.leaf_of(key)
        if pgno is None or pgno in self._checked:
            return
        try:
            _check_leaf(self._read(pgno), pgno, self.page_size, self.last_page)
        except _Damaged as why:
            raise StoreError(
                f"{where or self.store}: {self.path.name} is damaged ({why})"
            ) from None
        self._checked.add(pgno)

    def check_all(self, where: str | None = None) -> None:
        """Check every leaf page (before a cursor walks the whole tree, e.g. to copy it).

        Raises:
            StoreError: a leaf is damaged.
        """
        for key in self._keys:
            self.check_key(key, where)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
