"""The built-in CSV and JSON writers: exact bytes, and they stream."""

from __future__ import annotations

import csv
import io
import json

from guest_formats.csv_format import write_csv
from guest_formats.json_format import write_json

FIELDS = ["id", "name", "ok", "note"]
ROWS = [
    (1, "Doe, John", True, None),
    (2, 'Say "hi"', False, "line1\nline2"),
    (3, "Žluťoučký kůň", True, "crlf\r\nend"),
    (4, "", False, "tab\there"),
]


def test_csv_exact_bytes():
    out = b"".join(write_csv(iter(ROWS), FIELDS))
    assert out == (
        b'id,name,ok,note\r\n'
        b'1,"Doe, John",true,\r\n'
        b'2,"Say ""hi""",false,"line1\nline2"\r\n'
        + '3,Žluťoučký kůň,true,"crlf\r\nend"\r\n'.encode("utf-8")
        + b'4,,false,tab\there\r\n'
    )
    parsed = list(csv.reader(io.StringIO(out.decode("utf-8"), newline="")))
    assert parsed[1] == ["1", "Doe, John", "true", ""]
    assert parsed[2][3] == "line1\nline2"


def test_csv_empty_is_header_only():
    assert b"".join(write_csv(iter([]), FIELDS)) == b"id,name,ok,note\r\n"


def test_json_exact_bytes():
    out = b"".join(write_json(iter(ROWS[:2]), FIELDS))
    assert out == (b'[\n{"id":1,"name":"Doe, John","ok":true,"note":null},\n'
                   b'{"id":2,"name":"Say \\"hi\\"","ok":false,"note":"line1\\nline2"}\n]')
    assert json.loads(out)[0] == {"id": 1, "name": "Doe, John", "ok": True, "note": None}


def test_json_keeps_unicode_and_types():
    out = b"".join(write_json(iter(ROWS[2:3]), FIELDS))
    assert "Žluťoučký kůň".encode() in out
    assert json.loads(out) == [{"id": 3, "name": "Žluťoučký kůň", "ok": True, "note": "crlf\r\nend"}]


def test_json_empty_is_empty_array():
    assert b"".join(write_json(iter([]), FIELDS)) == b"[]"


def _lazy_rows(n, seen):
    for i in range(n):
        seen.append(i)
        yield (i, f"name {i}", True, None)


def test_writers_stream():
    """The first chunk comes out before the rows run out: nothing is collected first."""
    for writer in (write_csv, write_json):
        seen: list[int] = []
        chunks = writer(_lazy_rows(100_000, seen), FIELDS)
        first = next(chunks)
        assert first and len(seen) < 10_000, writer.__name__
        rest = sum(len(c) for c in chunks)
        assert len(seen) == 100_000 and rest > 0
