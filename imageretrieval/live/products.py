"""Product metadata of live writes: the `styles.csv` columns, validated before anything is stored."""

from __future__ import annotations

import csv
import io
import unicodedata
from collections.abc import Mapping
from typing import Any

from ..catalog import COLUMNS

FIELDS = tuple(c for c in COLUMNS if c != "id")  # what a product carries besides its id
REQUIRED_ON_ADD = ("productDisplayName", "articleType")
MAX_ID = 2**53 - 1  # ids stay exact as JavaScript numbers (the web app)
MAX_LENGTH = {"productDisplayName": 200}
DEFAULT_MAX_LENGTH = 64
YEAR_RANGE = (1900, 2100)
MAX_BATCH = 500  # products per batch write (a multipart form holds at most 1,000 files and fields)


class ProductValidationError(ValueError):
    """Bad product metadata; the message names the field (and the CSV line) to fix."""


def check_id(value: Any, where: str = "") -> int:
    text = str(value).strip() if value is not None else ""
    if not (text.isascii() and text.isdigit() and len(text) <= len(str(MAX_ID))) or not 1 <= int(text) <= MAX_ID:
        raise ProductValidationError(f"{where}id must be an integer from 1 to {MAX_ID}, got {str(value)[:40]!r}")
    return int(text)


def _check_text(name: str, value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ProductValidationError(f"{where}{name} must be text")
    value = value.strip()
    limit = MAX_LENGTH.get(name, DEFAULT_MAX_LENGTH)
    if len(value) > limit:
        raise ProductValidationError(f"{where}{name} is {len(value)} characters long; at most {limit}")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp") for ch in value):
        raise ProductValidationError(f"{where}{name} contains control or invisible characters")
    return value


def check_fields(fields: Mapping[str, Any], partial: bool, where: str = "") -> dict[str, Any]:
    """Validated, normalized fields (strings stripped, `year` an int or None).

    `partial` (PATCH, update): only the given fields; otherwise every field, missing ones empty and
    REQUIRED_ON_ADD non-empty. Unknown fields are refused: a typo must not silently drop data.
    """
    unknown = sorted(set(fields) - set(FIELDS) - {"id"})
    if unknown:
        raise ProductValidationError(f"{where}unknown field(s) {', '.join(map(repr, unknown))}; "
                                     f"fields: {', '.join(FIELDS)}")
    out: dict[str, Any] = {}
    for name in FIELDS:
        if name not in fields:
            if not partial:
                out[name] = None if name == "year" else ""
            continue
        value = fields[name]
        if name == "year":
            text = "" if value is None else str(value).strip()
            if text == "":
                out[name] = None
                continue
            try:
                number = float(text)  # the original styles.csv writes some years as 2012.0
                year = int(number)
            except (ValueError, OverflowError):
                raise ProductValidationError(f"{where}year must be a number, got {text[:20]!r}") from None
            if number != year:
                raise ProductValidationError(f"{where}year must be a whole number, got {text[:20]!r}")
            if not YEAR_RANGE[0] <= year <= YEAR_RANGE[1]:
                raise ProductValidationError(f"{where}year must be within {YEAR_RANGE[0]}-{YEAR_RANGE[1]}")
            out[name] = year
        else:
            out[name] = _check_text(name, "" if value is None else value, where)
    if not partial:
        missing = [n for n in REQUIRED_ON_ADD if not out[n]]
        if missing:
            raise ProductValidationError(f"{where}missing required field(s): {', '.join(missing)}")
    elif any(n in out and not out[n] for n in REQUIRED_ON_ADD):
        raise ProductValidationError(f"{where}{', '.join(REQUIRED_ON_ADD)} cannot be emptied")
    return out


def parse_styles_rows(text: str, where: str = "styles", max_rows: int | None = MAX_BATCH
                      ) -> list[tuple[int, dict[str, Any]]]:
    """Rows of a styles.csv-like file -> [(id, fields)]; strict: any malformed row fails the whole file.

    The header names the columns (`id` and any of FIELDS, in any order); every row has exactly that
    many fields (quote names with commas). Ids must be unique within the file. `max_rows`: a batch's cap.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")  # Windows and old Mac line endings alike
    reader = csv.reader(io.StringIO(text))
    try:
        return _parse_rows(reader, where, max_rows)
    except csv.Error as exc:  # a field over csv's size limit, a stray quote, ...
        raise ProductValidationError(f"{where} line {reader.line_num}: not readable as CSV ({exc})") from None


def _parse_rows(reader, where: str, max_rows: int | None) -> list[tuple[int, dict[str, Any]]]:
    header = next(reader, None)
    if not header:
        raise ProductValidationError(f"{where}: empty file; expected a header line such as {','.join(COLUMNS)}")
    header = [h.strip().lstrip("\ufeff") for h in header]
    if "id" not in header:
        raise ProductValidationError(f"{where}: the header has no 'id' column: {header!r}")
    bad = sorted(set(header) - set(COLUMNS))
    if bad or len(set(header)) != len(header):
        raise ProductValidationError(f"{where}: unknown or repeated column(s) {bad or header!r}; "
                                     f"columns: {', '.join(COLUMNS)}")
    rows: list[tuple[int, dict[str, Any]]] = []
    seen: set[int] = set()
    for fields in reader:
        line = reader.line_num
        if not any(f.strip() for f in fields):
            continue
        if len(fields) != len(header):
            raise ProductValidationError(f"{where} line {line}: {len(fields)} fields, the header has {len(header)} "
                                         "(quote values that contain commas)")
        record = dict(zip(header, fields, strict=True))
        pid = check_id(record.pop("id"), f"{where} line {line}: ")
        if pid in seen:
            raise ProductValidationError(f"{where} line {line}: id {pid} appears twice in the file")
        seen.add(pid)
        rows.append((pid, record))
        if max_rows is not None and len(rows) > max_rows:
            raise ProductValidationError(f"{where}: more than {max_rows} products; split the file")
    if not rows:
        raise ProductValidationError(f"{where}: no product rows after the header")
    return rows
