"""The monthly export's request: year, month and format, checked and turned
into the month's bounds. The message of every refusal names what is wrong and is
safe to show (see :mod:`guest_backup.export.stream` for the export itself)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Mapping, Sequence

from guest_registration.exports import ExportFormat, FormatRegistry, UnknownFormatError

PARAMETERS = ("year", "month", "format")
MIN_YEAR, MAX_YEAR = 1900, 9999
_NUMBER = re.compile(r"[0-9]{1,6}")


class ExportRequestError(ValueError):
    """Bad export parameters; the message is safe to show to the user."""


@dataclass(frozen=True)
class ExportRequest:
    year: int
    month: int
    format: ExportFormat

    @property
    def filename(self) -> str:
        return f"guests_{self.year:04d}_{self.month:02d}.{self.format.extension}"


def _number(name: str, raw: str | None, low: int, high: int) -> int:
    if raw is None or raw.strip() == "":
        raise ExportRequestError(f"'{name}' is required")
    raw = raw.strip()
    if not _NUMBER.fullmatch(raw):
        raise ExportRequestError(f"'{name}' must be a whole number, got {raw[:20]!r}")
    value = int(raw)
    if not low <= value <= high:
        raise ExportRequestError(f"'{name}' must be between {low} and {high}, got {value}")
    return value


def parse_request(args: Mapping[str, Sequence[str]], formats: FormatRegistry) -> ExportRequest:
    """Validate raw parameters (each name mapped to *all* its values).

    Raises :class:`ExportRequestError` naming what is wrong: missing or
    non-numeric year/month, out-of-range values, repeated or unknown parameters,
    an unknown format (listing the available ones).
    """
    unknown = sorted(k for k in args if k not in PARAMETERS)
    if unknown:
        raise ExportRequestError(
            f"unknown parameter {unknown[0][:40]!r}; allowed: {', '.join(PARAMETERS)}")
    for key, values in args.items():
        if len(values) > 1:
            raise ExportRequestError(f"'{key}' is given {len(values)} times; give it once")
    single = {k: (v[0] if v else None) for k, v in args.items()}
    year = _number("year", single.get("year"), MIN_YEAR, MAX_YEAR)
    month = _number("month", single.get("month"), 1, 12)
    # absent: CSV; given: a format's exact name, as the OpenAPI schema's enum says
    # (an empty ``format=`` was taken for CSV, which a schema-driven client's test
    # counts as invalid data accepted)
    name = single.get("format") if "format" in single else "csv"
    name = name if name is not None else ""
    try:
        fmt = formats.get(name)
    except UnknownFormatError as exc:
        raise ExportRequestError(
            f"unknown format {name[:32]!r}; available: {', '.join(exc.available)}") from None
    return ExportRequest(year, month, fmt)


def month_range(year: int, month: int) -> tuple[datetime, datetime | None]:
    """First instant of the month (inclusive) and of the next month (exclusive), UTC;
    no end after December 9999 (a year Python's datetime cannot hold: nothing
    created in this app's lifetime comes later)."""
    start = datetime(year, month, 1)
    if month < 12:
        return start, datetime(year, month + 1, 1)
    return start, datetime(year + 1, 1, 1) if year < MAX_YEAR else None
