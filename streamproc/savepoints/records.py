"""``.records`` files: writing them, and a reader that trusts nothing in them.

A file is a magic line, then per record a fixed header (key length, value length, timestamp,
header count; -1 for a null key or value) and the bytes. Plain files rather than RocksDB
directories: a savepoint is written once, copied around, checked against the manifest's SHA-256
and read sequentially; it never needs point updates.

The reader takes every length field as a claim to check, not a size to allocate: a length
larger than what is left of the file is refused before anything is read (a hostile 2^31 in a
100-byte file would otherwise be an allocation of 2 GiB), and so is a negative one other than
-1. Only regular files are opened: a FIFO planted in a savepoint would block the reader forever.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from streamproc.savepoints.manifest import HEAD, HEADER, MAGIC, FileInfo, SavepointError, show

_CHUNK = 1 << 20


@dataclass(frozen=True)
class SavedRecord:
    key: bytes | None
    value: bytes | None
    timestamp: int = 0
    headers: tuple[tuple[str, bytes | None], ...] = ()


def write_records(path: Path, records: Iterable[SavedRecord]) -> FileInfo:
    """Write ``records`` to ``path``; returns their count, size and checksum."""
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    n = 0
    with open(path, "wb") as f:
        def out(data: bytes) -> None:
            digest.update(data)
            f.write(data)

        out(MAGIC)
        for r in records:
            parts = [HEAD.pack(-1 if r.key is None else len(r.key),
                               -1 if r.value is None else len(r.value), r.timestamp,
                               len(r.headers)), r.key or b"", r.value or b""]
            for name, value in r.headers:
                encoded = name.encode()
                parts += [HEADER.pack(len(encoded), -1 if value is None else len(value)),
                          encoded, value or b""]
            out(b"".join(parts))
            n += 1
        f.flush()
        os.fsync(f.fileno())
    return FileInfo(records=n, bytes=path.stat().st_size, sha256=digest.hexdigest())


def open_regular(path: Path, label: Path | None = None, *,
                 nofollow: bool = False) -> tuple[BinaryIO, int]:
    """``path`` opened for reading, and its size; OSError if it cannot be opened, SavepointError
    (naming ``label``, default ``path``) if it is not a regular file. ``nofollow`` refuses a
    symlink in the last component: callers pass a path they resolved and checked, so a symlink
    there was planted since."""
    # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer; for a regular
    # file it changes nothing.
    flags = os.O_RDONLY | os.O_NONBLOCK | (os.O_NOFOLLOW if nofollow else 0)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SavepointError(f"savepoint file {label or path} is not a regular file")
        return os.fdopen(fd, "rb"), st.st_size
    except BaseException:
        os.close(fd)
        raise


def scan(f: BinaryIO, label: Path, size: int, *, store: bool = False,
         records: int | None = None) -> Iterator[SavedRecord]:
    """The records of the open file ``f`` of ``size`` bytes, named ``label`` in errors.
    ``store``: every record must have a key and a value (a store holds live keys only);
    ``records``: how many the manifest says it holds."""
    pos = 0
    index = at = 0

    def take(n: int) -> bytes:
        nonlocal pos
        data = f.read(n)
        if len(data) != n:  # smaller than when it was opened: changed under us
            raise SavepointError(f"savepoint file {label} is truncated: it ended at byte "
                                 f"{pos + len(data)} while being read")
        pos += n
        return data

    def fixed(n: int) -> bytes:
        if n > size - pos:
            raise SavepointError(f"savepoint file {label} is truncated: record {index} (at byte "
                                 f"{at}) is cut off after {size - at} bytes")
        return take(n)

    def sized(n: int, what: str) -> bytes | None:
        if n == -1:
            return None
        if n < 0:
            raise SavepointError(f"savepoint file {label}: record {index} (at byte {at}): "
                                 f"{what} {n} is negative")
        if n > size - pos:
            raise SavepointError(f"savepoint file {label}: record {index} (at byte {at}): "
                                 f"{what} {n} is more than the {size - pos} bytes left in the "
                                 "file")
        return take(n)

    if size < len(MAGIC) or take(len(MAGIC)) != MAGIC:
        raise SavepointError(f"{label} is not a savepoint records file")
    while pos < size:
        at = pos
        klen, vlen, ts, nheaders = HEAD.unpack(fixed(HEAD.size))
        key = sized(klen, "key length")
        value = sized(vlen, "value length")
        headers = []
        for _ in range(nheaders):
            nlen, hlen = HEADER.unpack(fixed(HEADER.size))
            raw = sized(nlen, "header name length") or b""
            try:
                name = raw.decode()
            except UnicodeDecodeError:
                raise SavepointError(f"savepoint file {label}: record {index} (at byte {at}): "
                                     f"header name {show(raw)} is not UTF-8") from None
            headers.append((name, sized(hlen, "header value length")))
        if store and (key is None or value is None):
            raise SavepointError(f"savepoint file {label}: record {index} (at byte {at}) has a "
                                 f"null {'key' if key is None else 'value'}: a store file "
                                 "holds live keys only")
        index += 1
        if records is not None and index > records:
            raise SavepointError(f"savepoint file {label} holds more than the {records} "
                                 "records the manifest lists")
        yield SavedRecord(key, value, ts, tuple(headers))
    if records is not None and index != records:
        raise SavepointError(f"savepoint file {label} holds {index} records, the manifest "
                             f"lists {records}")


def read_records(path: Path) -> Iterator[SavedRecord]:
    """The records of a ``.records`` file at a path of the caller's choosing, in order (the
    checksum is :meth:`Savepoint.verify`'s job). Reading a savepoint goes through
    :class:`Savepoint`, which keeps every path inside it."""
    try:
        f, size = open_regular(path)
    except OSError as exc:
        raise SavepointError(f"cannot read savepoint file {path}: {exc.strerror or exc}") from None
    with f:
        yield from scan(f, path, size)


def sha256_of(f: BinaryIO) -> str:
    """The SHA-256 of what is left of ``f``."""
    digest = hashlib.sha256()
    while chunk := f.read(_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()
