"""Reading annotation files strictly: every malformed line is one DataError naming the
file, the line (or the field) and what was expected.

Shared by the readers of the official layouts (sop, cub, inshop, ...). A UTF-8
byte-order mark and CRLF line ends are accepted (read as if absent: editors on Windows
write both); any other problem is refused rather than guessed around: text that is not
UTF-8, an empty file, a field that should be an integer, a wrong number of fields, the
same image id twice, an image path that leaves the dataset's root.
"""

from __future__ import annotations

import os
from pathlib import Path

from harness.errors import DataError

BOM = b"\xef\xbb\xbf"


def short(value, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters (error messages stay one short line)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_text(path: Path, dataset: str, layout: str) -> str:
    """The UTF-8 text of ``path`` without a byte-order mark; a missing, unreadable,
    non-UTF-8, binary or empty file is a DataError naming the file (and the line)."""
    if not path.is_file():
        raise DataError(f"{dataset}: {path} not found; expected layout: {layout}")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{dataset}: cannot read {path} ({e.strerror}); check its permissions") from None
    body = raw[len(BOM):] if raw.startswith(BOM) else raw
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        line = body[: e.start].count(b"\n") + 1
        raise DataError(f"{dataset}: {path}:{line}: not UTF-8 text (byte 0x{body[e.start]:02x}); "
                        "expected a UTF-8 text file; re-download it or save it as UTF-8") from None
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise DataError(f"{dataset}: {path}:{line}: a NUL byte in a text file (a binary or damaged file); "
                        "re-download it")
    if not text.strip():
        raise DataError(f"{dataset}: {path} is empty; expected layout: {layout}")
    return text


def read_lines(path: Path, dataset: str, layout: str) -> list[tuple[int, str]]:
    """``(line number, text)`` of every non-blank line of ``path`` (1-based, BOM and
    ``\\r`` removed); a missing, unreadable, non-UTF-8 or empty file is a DataError."""
    text = read_text(path, dataset, layout)
    lines = [(n, ln.rstrip("\r")) for n, ln in enumerate(text.split("\n"), 1)]
    return [(n, ln) for n, ln in lines if ln.strip()]


def parse_int(value: str, where: str, field: str) -> int:
    """``int(value)`` or a DataError ``WHERE: FIELD 'x1' is not an integer``."""
    try:
        if isinstance(value, str) and not value.strip().lstrip("+-").isdigit():
            raise ValueError
        number = int(value)
        if not -(2**63) <= number < 2**63:
            raise ValueError
        return number
    except (TypeError, ValueError, OverflowError):
        raise DataError(f"{where}: {field} {short(value)} is not an integer; expected a whole number there") from None


def relative_path(rel: str, root: Path, where: str) -> Path:
    """``root / rel`` for a relative path that stays under ``root``, else a DataError."""
    norm = os.path.normpath(rel.replace("\\", "/"))
    if os.path.isabs(rel) or os.path.isabs(norm) or norm == ".." or norm.startswith("../") or "\x00" in rel:
        raise DataError(f"{where}: image path '{rel}' leaves the dataset root; expected a path relative to "
                        f"{root} without '..' (move the images under the root)")
    return root / rel


def no_duplicates(keys: list[tuple[str, int]], where: str, what: str, records: bool = False) -> None:
    """``keys``: (key, line) pairs; the second occurrence of a key is a DataError naming
    both lines (``records``: both record indices, ``where[i]``)."""
    first: dict[str, int] = {}
    for key, line in keys:
        if key in first:
            at, before = (f"[{line}]", f"at [{first[key]}]") if records else (f":{line}", f"on line {first[key]}")
            raise DataError(f"{where}{at}: {what} {short(key)} is listed twice (first {before}); "
                            f"expected each {what} once")
        first[key] = line
