"""A cheap structural check of a MATLAB 5 MAT-file before ``scipy.io.loadmat`` reads it.

``loadmat`` parses data element tags in C (``scipy/io/matlab/_mio5_utils.pyx``) and
indexes a fixed table by the tag's data type number without a bounds check, so one
mutated byte of a tag (a data type outside 1-18) ends the process with SIGSEGV, which
no ``except`` can catch. This module walks the file's data element tags first (the
128-byte header, then every tag, into compressed elements and into the sub-elements of
every ``miMATRIX``) and refuses, with a DataError naming the file and byte offset:

- a file shorter than the header or larger than ``MAX_BYTES``,
- a header without the ``MATLAB 5.0 MAT-file`` text, version 0x0100 or the ``IM``/``MI``
  endian indicator,
- a tag whose data type is not one of the format's (1-7, 9, 12-18), a small data element
  of more than 4 bytes, an element that runs past its parent (the file or the enclosing
  matrix), a ``miMATRIX`` whose array flags or dimensions sub-elements are malformed, an
  array class outside 1-17, a numeric, char or sparse array whose data elements are not
  numeric or are fewer or more than its class and complex flag say (scipy reads them
  unchecked: a complex flag set on a real array crashed it too),
- a compressed element that does not inflate (or inflates past ``MAX_BYTES``).

It does not interpret the array contents: a structurally valid but internally corrupt
file can still crash scipy (docs/reliability.md, "Fuzzing").
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from harness.errors import DataError

HEADER_BYTES = 128
HEADER_TEXT = b"MATLAB 5.0 MAT-file"
MAX_BYTES = 1 << 30  # 1 GiB, on disk and inflated: cars_annos.mat is a few MB
# MAT-file data types: miINT8..miDOUBLE (1-7, 8 reserved), miDOUBLE 9, (10-11 reserved),
# miINT64, miUINT64, miMATRIX, miCOMPRESSED, miUTF8, miUTF16, miUTF32 (12-18).
VALID_TYPES = frozenset({1, 2, 3, 4, 5, 6, 7, 9, 12, 13, 14, 15, 16, 17, 18})
NUMERIC_TYPES = frozenset({1, 2, 3, 4, 5, 6, 7, 9, 12, 13})
TEXT_TYPES = frozenset({16, 17, 18})
MI_INT32, MI_UINT32, MI_MATRIX, MI_COMPRESSED = 5, 6, 14, 15
MAX_DEPTH = 64  # nested cells/structs deeper than this are refused (a recursion bomb)


class _Bad(Exception):
    def __init__(self, offset: int, what: str):
        super().__init__(f"byte {offset}: {what}")


def check_mat5(path: Path, dataset: str, fix: str = "re-download it") -> None:
    """Raise a one-line DataError ``DATASET: cannot read PATH as a MATLAB file (byte N: what;
    expected ...); FIX`` for a file that is not a structurally sound MATLAB 5 MAT-file."""
    def bad(what: str) -> DataError:
        return DataError(f"{dataset}: cannot read {path} as a MATLAB file ({what}); {fix}")

    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise bad(f"{size} bytes; expected a MAT-file under {MAX_BYTES} bytes")
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{dataset}: cannot read {path} ({e.strerror}); check its permissions") from None
    if len(data) < HEADER_BYTES:
        raise bad(f"{len(data)} bytes, shorter than the 128-byte MAT-file header; expected a MATLAB 5 MAT-file")
    if not data.startswith(HEADER_TEXT):
        raise bad("the header does not start with 'MATLAB 5.0 MAT-file'; expected a MATLAB 5 (or 7) MAT-file, "
                  "not v7.3 (HDF5) or another format")
    endian = data[126:128]
    if endian not in (b"IM", b"MI"):
        raise bad(f"header bytes 126-127 are {endian!r}; expected the endian indicator 'IM' or 'MI'")
    order = "<" if endian == b"IM" else ">"
    version = struct.unpack(order + "H", data[124:126])[0]
    if version != 0x0100:
        raise bad(f"header bytes 124-125 give version 0x{version:04x}; expected 0x0100 (MAT-file version 5)")
    try:
        _elements(memoryview(data), HEADER_BYTES, len(data), order, 0, top=True)
    except _Bad as e:
        raise bad(f"{e}; a damaged file?") from None


def _tag(buf: memoryview, at: int, end: int, order: str) -> tuple[int, int, int, int]:
    """(data type, byte count, data start, next element) of the tag at ``at``."""
    if at + 8 > end:
        raise _Bad(at, f"a data element tag runs past the end of its parent (at byte {end})")
    first, second = struct.unpack_from(order + "II", buf, at)
    if first >> 16:  # small data element: type and count in 4 bytes, data in the next 4
        mdtype, nbytes = first & 0xFFFF, first >> 16
        if nbytes > 4:
            raise _Bad(at, f"a small data element says {nbytes} bytes; expected at most 4")
        start, nxt = at + 4, at + 8
    else:
        mdtype, nbytes = first, second
        start = at + 8
        nxt = start + nbytes + (-nbytes % 8)
        if start + nbytes > end:
            raise _Bad(at, f"a data element of {nbytes} bytes runs past the end of its parent (at byte {end})")
        nxt = min(nxt, end)  # the last element's padding may be missing
    if mdtype not in VALID_TYPES:
        raise _Bad(at, f"data type {mdtype} in a data element tag; expected one of 1-7, 9, 12-18")
    return mdtype, nbytes, start, nxt


def _elements(buf: memoryview, at: int, end: int, order: str, depth: int, top: bool = False) -> None:
    while at < end:
        if top and end - at < 8 and not any(buf[at:end]):
            return  # zero padding at the end of the file
        mdtype, nbytes, start, nxt = _tag(buf, at, end, order)
        if mdtype == MI_COMPRESSED:
            if not top:
                raise _Bad(at, "a compressed element inside a matrix; expected it only at the top level")
            inflater = zlib.decompressobj()
            try:
                inner = inflater.decompress(bytes(buf[start:start + nbytes]), MAX_BYTES)
            except zlib.error as e:
                raise _Bad(at, f"a compressed element that does not inflate ({e})") from None
            if inflater.unconsumed_tail:
                raise _Bad(at, f"a compressed element that inflates past {MAX_BYTES} bytes")
            try:
                _elements(memoryview(inner), 0, len(inner), order, depth + 1)
            except _Bad as e:
                raise _Bad(at, f"inside the compressed element: {e}") from None
            nxt = start + nbytes  # compressed elements are not padded to 8 bytes
        elif mdtype == MI_MATRIX:
            _matrix(buf, start, start + nbytes, order, depth + 1)
        elif top:
            raise _Bad(at, f"a top-level element of data type {mdtype}; expected a matrix (14) or "
                           "compressed (15) element")
        at = nxt


def _matrix(buf: memoryview, at: int, end: int, order: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise _Bad(at, f"matrices nested more than {MAX_DEPTH} deep")
    if at == end:
        return  # an empty matrix element (MATLAB writes these for empty cells)
    mdtype, nbytes, data, nxt = _tag(buf, at, end, order)
    if mdtype != MI_UINT32 or nbytes != 8:
        raise _Bad(at, f"array flags of data type {mdtype} and {nbytes} bytes; expected miUINT32 (6), 8 bytes")
    flags = struct.unpack_from(order + "I", buf, data)[0]
    mclass, is_complex = flags & 0xFF, bool(flags & 0x800)
    if not 1 <= mclass <= 17:
        raise _Bad(data, f"array class {mclass}; expected 1-17")
    at = nxt
    mdtype, nbytes, _, nxt = _tag(buf, at, end, order)
    if mdtype != MI_INT32 or nbytes < 8 or nbytes % 4:
        raise _Bad(at, f"array dimensions of data type {mdtype} and {nbytes} bytes; expected miINT32 (5), "
                       "a multiple of 4 bytes, at least 8")
    at = nxt
    parts = []  # (offset, data type) of the sub-elements after the dimensions
    while at < end:
        mdtype, nbytes, start, nxt = _tag(buf, at, end, order)
        if mdtype == MI_MATRIX:
            _matrix(buf, start, start + nbytes, order, depth + 1)
        elif mdtype == MI_COMPRESSED:
            raise _Bad(at, "a compressed element inside a matrix; expected it only at the top level")
        parts.append((at, mdtype))
        at = nxt
    # Numeric, char and sparse arrays: scipy reads a fixed sequence of numeric elements
    # (the imaginary part when the complex flag is set) without checking their types.
    wanted = {4: 1, 5: 3}.get(mclass, 1 if 6 <= mclass <= 15 else None)
    if wanted is not None:
        wanted += is_complex
        data_parts = parts[1:]  # after the array name
        if len(data_parts) != wanted:
            raise _Bad(at, f"an array of class {mclass}{' (complex)' if is_complex else ''} with "
                           f"{len(data_parts)} data elements; expected {wanted}")
        allowed = NUMERIC_TYPES | (TEXT_TYPES if mclass == 4 else frozenset())
        for offset, mdtype in data_parts:
            if mdtype not in allowed:
                raise _Bad(offset, f"data type {mdtype} in an array of class {mclass}; expected a numeric type")
