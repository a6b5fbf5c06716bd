"""The exports' whole-chunk render in C (``guest_formats._copyrender``) writes
exactly the bytes of the generic writers and of the renders in Python, declines
what it does not render whole, and survives hostile chunks: random rows made the
way PostgreSQL's COPY writes them (text for JSON, CSV for CSV), and random bytes,
also under AddressSanitizer."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guest_formats import csv_format, json_format
from guest_formats.csv_format import _to_rfc4180, write_csv
from guest_formats.json_format import ChunkRender, write_json
from tests.helpers import missing

native = json_format.native_render
native_csv = csv_format.native_csv
SOURCE = Path(__file__).resolve().parent.parent / "plugins" / "export_formats" / "_copyrender.c"


@pytest.fixture(autouse=True)
def built():
    if native is None or native_csv is None:
        missing("REQUIRE_NATIVE", "guest_formats._copyrender was not built (no C compiler at "
                                  "install): the exports render in Python")


_COPY_ESCAPES = {"\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t",
                 "\v": "\\v"}


def copy_text(value, kind: str) -> bytes:
    """A value as PostgreSQL's COPY writes it in text format (the first and last
    booleans come from the query's CASE as true/false)."""
    if value is None:
        return b"\\N"
    if kind == "bool":
        return b"t" if value else b"f"
    if kind == "edge-bool":
        return b"true" if value else b"false"
    if kind == "number":
        return str(value).encode()
    return "".join(_COPY_ESCAPES.get(c, c) for c in value).encode("utf-8")


NAMES = ["id", "first_name", 'say "hi"', "Nováková", "100%", "a\\b", "😀", "x"]
TEXT = st.text(st.one_of(st.sampled_from(list('"\\\t\n\r\b\f\v\x00\x01\x1f\x7f tfN,é😀\u2028')),
                         st.characters(codec="utf-8")), max_size=12)


@st.composite
def tables(draw, nulls: bool):
    kinds = draw(st.lists(st.sampled_from(["number", "string", "bool"]), min_size=2, max_size=6))
    kinds = [("edge-bool" if kind == "bool" and i in (0, len(kinds) - 1) else kind)
             for i, kind in enumerate(kinds)]
    values = {"number": st.integers(-2**63, 2**63 - 1), "string": TEXT,
              "bool": st.booleans(), "edge-bool": st.booleans()}
    cell = {kind: (st.none() | values[kind]) if nulls else values[kind] for kind in values}
    rows = draw(st.lists(st.tuples(*[cell[kind] for kind in kinds]), min_size=1, max_size=30))
    return kinds, rows


def renders(kinds):
    fields = NAMES[:len(kinds)]
    render_kinds = ["number" if kind == "edge-bool" else kind for kind in kinds]
    raw_bools = [i for i, kind in enumerate(kinds) if kind == "bool"]
    return fields, ChunkRender(fields, render_kinds, raw_bools)


def copy_rows(kinds, rows) -> list[bytes]:
    return [b"\t".join(copy_text(v, k) for v, k in zip(row, kinds)) + b"\n" for row in rows]


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tables(nulls=False) | tables(nulls=True))
def test_the_c_render_writes_the_writers_bytes(table):
    """Any rows, as COPY writes them: the chunk's objects are those of write_json,
    through C, through Python's whole-chunk render and value by value; C declines
    exactly the chunks holding a NULL, \\v or a raw control character."""
    kinds, rows = table
    fields, render = renders(kinds)
    expected = b"".join(write_json(iter(rows), fields))[:-len(b"\n]")]
    chunk = copy_rows(kinds, rows)
    assert render.next_chunk(chunk) == expected  # C, or value by value where it declined
    assert render.python(b"[\n", chunk) == expected
    assert render.careful(b"[\n", chunk) == expected
    declined = native(b"[\n", b"".join(chunk), *render.native_args) is None
    unrenderable = any(v is None for row in rows for v in row) or any(
        isinstance(v, str) and any(c < " " and c not in "\b\f\n\r\t" for c in v)
        for row in rows for v in row)
    assert declined == unrenderable


@settings(max_examples=300, deadline=None)
@given(tables(nulls=False), st.data())
def test_chunks_join_into_one_array(table, data):
    """The first chunk opens the array, every next one starts with a comma: the
    chunks one after the other (and the closing bracket) are the rows."""
    kinds, rows = table
    fields, render = renders(kinds)
    cut = data.draw(st.integers(1, len(rows)))
    chunks = [render.next_chunk(copy_rows(kinds, part)) for part in (rows[:cut], rows[cut:])
              if part]
    assert chunks[0].startswith(b"[\n{") and all(c.startswith(b",\n{") for c in chunks[1:])
    parsed = json.loads(b"".join(chunks) + b"\n]")
    assert [list(obj) for obj in parsed] == [fields] * len(rows)
    assert [tuple(obj.values()) for obj in parsed] == rows


#: pieces of values that COPY writes, and some it never writes
PIECES = st.sampled_from([b"\\", b'"', b"t", b"f", b"\\N", b"\\v", b"\\x", b"\x01", b"\x1f",
                          b"a", b"\xc3\xa9", b"\\\\", b"\\t", b"\\n", b"\x7f", b"\r", b"\\0"])


@st.composite
def hostile_chunks(draw):
    """Rows of 2-5 values, mostly as many as the columns, some one or two more or
    one less; booleans that are not t or f; now and then no final line feed."""
    raw = draw(st.lists(st.booleans(), min_size=0, max_size=3))
    columns = len(raw) + 2
    rows = []
    for _ in range(draw(st.integers(1, 6))):
        count = draw(st.sampled_from([columns] * 6 + [columns - 1, columns + 1, columns + 2]))
        values = [draw(st.sampled_from([b"t", b"f"] * 4 + [b"", b"tt", b"\\N", b"true", b'"']))
                  if 0 < i <= len(raw) and raw[i - 1] else
                  draw(st.lists(PIECES, max_size=5).map(b"".join)) for i in range(count)]
        rows.append(b"\t".join(values) + b"\n")
    chunk = b"".join(rows)
    if draw(st.integers(0, 9)) == 0:
        chunk = chunk[:-1]
    return ["string"] + [("bool" if r else "string") for r in raw] + ["string"], chunk


@settings(max_examples=1500, deadline=None)
@given(hostile_chunks() | st.tuples(st.just(["string", "string"]), st.binary(max_size=200)))
def test_hostile_chunks_are_rendered_right_or_declined(case):
    """Bytes no COPY writes (a value too many or too few, a lone backslash, an
    unknown escape, a raw control character, no final line feed): C declines them,
    or renders valid JSON, as the Python render does."""
    kinds, chunk = case
    fields, render = renders(kinds)
    rendered = native(b"[\n", chunk, *render.native_args)
    if rendered is not None:
        rows = chunk.splitlines(keepends=True)
        assert all(row.count(b"\t") == len(kinds) - 1 for row in rows)
        assert [list(o) for o in json.loads(rendered + b"\n]")] == [fields] * len(rows)
        assert rendered == render.python(b"[\n", rows)


def test_large_chunks_grow_the_buffer():
    """A chunk of quotes doubles in size; one of many rows grows past the first
    allocation many times over."""
    fields, render = renders(["string", "bool", "string"])
    quotes = [b'"' * 300_000 + b"\tt\t" + b'"' * 300_000 + b"\n"]
    assert json.loads(render.next_chunk(quotes) + b"\n]") == [
        {"id": '"' * 300_000, "first_name": True, 'say "hi"': '"' * 300_000}]
    rows = [b"n%d\tf\t%d\n" % (i, i) for i in range(100_000)]
    parsed = json.loads(renders(["string", "bool", "string"])[1].next_chunk(rows) + b"\n]")
    assert len(parsed) == 100_000 and parsed[-1] == {
        "id": "n99999", "first_name": False, 'say "hi"': "99999"}


@pytest.mark.parametrize("args,error", [
    ((b"[", "chunk", b"{", (b",",), b"}", b"}", b"\0\0"), TypeError),
    ((b"[", b"a\tb\n", b"{", [b","], b"}", b"}", b"\0\0"), TypeError),
    ((b"[", b"a\tb\n", b"{", ",", b"}", b"}", b"\0\0"), TypeError),
    ((b"[", b"a\tb\n", b"{", ("x",), b"}", b"}", b"\0\0"), TypeError),
    ((b"[", b"a\tb\n", b"{", (b",",), b"}", b"}", b"\0"), ValueError),
    ((b"[", b"a\tb\n", b"{", (), b"}", b"}", b"\0"), ValueError),
    ((b"[", b"t\tb\n", b"{", (b",",), b"}", b"}", b"\1\0"), ValueError),
])
def test_wrong_arguments_are_refused(args, error):
    with pytest.raises(error):
        native(*args)


# ---------------------------------------------------------------------------------- CSV

def copy_csv(value, forced: bool) -> bytes:
    """A value as COPY ... WITH (FORMAT csv, NULL '\\N') writes it; a boolean
    forced-quoted, or true/false from the query's CASE."""
    if value is None:
        return b"\\N"
    if isinstance(value, bool):
        return (b'"t"' if value else b'"f"') if forced else (b"true" if value else b"false")
    text = str(value)
    if text == "\\N" or any(c in text for c in ',"\r\n'):
        return b'"' + text.replace('"', '""').encode("utf-8") + b'"'
    return text.encode("utf-8")


CSV_TEXT = st.text(st.one_of(st.sampled_from(list(',"\r\n\\Ntf \t\x01é😀')),
                             st.characters(codec="utf-8", exclude_characters="\x00")),
                   max_size=10)


@st.composite
def csv_tables(draw, nulls: bool):
    kinds = draw(st.lists(st.sampled_from(["number", "string", "bool"]), min_size=2, max_size=6))
    forced = csv_format._forced_bools(kinds)
    values = {"number": st.integers(-2**63, 2**63 - 1), "string": CSV_TEXT, "bool": st.booleans()}
    cell = {kind: (st.none() | values[kind]) if nulls else values[kind] for kind in values}
    rows = draw(st.lists(st.tuples(*[cell[kind] for kind in kinds]), min_size=1, max_size=30))
    return kinds, forced, rows


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(csv_tables(nulls=False) | csv_tables(nulls=True))
def test_the_c_csv_fix_up_writes_the_writers_bytes(table):
    """Any rows, as COPY's CSV writes them: CRLF after each row (not inside a
    quoted value), the forced-quoted booleans as true/false; the bytes of
    write_csv, through C and through Python's passes. C declines exactly the
    chunks holding \\N (a NULL, or a value COPY quoted because it is \\N)."""
    kinds, forced, rows = table
    fields = NAMES[:len(kinds)]
    chunk = [b",".join(copy_csv(v, i in forced) for i, v in enumerate(row)) + b"\n"
             for row in rows]
    expected = b"".join(write_csv(iter(rows), fields)).split(b"\r\n", 1)[1]
    flags = bytes(i in forced for i in range(len(kinds)))
    rendered = native_csv(b"".join(chunk), flags)
    assert _to_rfc4180(list(chunk), forced) == expected
    assert (rendered is None) == any(b"\\N" in row for row in chunk)
    assert rendered is None or rendered == expected


@st.composite
def hostile_csv(draw):
    """COPY-like CSV rows with what COPY never writes: a value too many or too
    few, an unclosed or stray quote, a forced boolean that is not "t" or "f", no
    final line feed; and sometimes random bytes."""
    columns = draw(st.integers(2, 5))
    flags = draw(st.lists(st.booleans(), min_size=columns - 1, max_size=columns - 1)) + [False]
    piece = st.sampled_from([b",", b'"', b'""', b"\n", b"\r", b"a", b"\\", b"\\N", b"t", b"\xc3"])
    rows = []
    for _ in range(draw(st.integers(1, 6))):
        count = draw(st.sampled_from([columns] * 6 + [columns - 1, columns + 1, columns + 2]))
        values = []
        for i in range(count):
            if i < columns and flags[i]:
                values.append(draw(st.sampled_from([b'"t"', b'"f"'] * 4 + [b"t", b'"x"', b'"t'])))
            elif draw(st.booleans()):
                inner = draw(st.lists(piece, max_size=4).map(b"".join))
                values.append(b'"' + inner.replace(b'"', b'""') + b'"'
                              if draw(st.integers(0, 7)) else b'"' + inner)
            else:
                values.append(draw(st.lists(st.sampled_from([b"a", b"1", b"\xc3\xa9", b" ", b"\\",
                                                             b'"']), max_size=4).map(b"".join)))
        rows.append(b",".join(values) + b"\n")
    chunk = b"".join(rows)
    if draw(st.integers(0, 9)) == 0:
        chunk = chunk[:-1]
    if draw(st.integers(0, 5)) == 0:
        chunk = draw(st.binary(max_size=120))
    return bytes(flags), chunk


@settings(max_examples=1500, deadline=None)
@given(hostile_csv())
def test_hostile_csv_chunks_are_fixed_up_right_or_declined(case):
    """C declines what COPY never writes, or gives what Python's csv module reads
    as the same rows, with CRLF after each."""
    import csv
    import io

    flags, chunk = case
    rendered = native_csv(chunk, flags)
    if rendered is None:
        return
    assert rendered.endswith(b"\r\n") and b"\\N" not in chunk
    theirs = list(csv.reader(io.StringIO(chunk.decode("utf-8", "surrogateescape"), newline="")))
    ours = list(csv.reader(io.StringIO(rendered.decode("utf-8", "surrogateescape"), newline="")))
    assert len(ours) == len(theirs) and all(len(row) == len(flags) for row in ours)
    for before, after in zip(theirs, ours):
        assert after == [({"t": "true", "f": "false"}[v] if flag else v)
                         for v, flag in zip(before, flags)]


def test_the_csv_buffer_holds_the_largest_growth():
    """Every value a forced boolean: the output's largest growth over its input
    (``"f"`` as ``false``, a CR per row)."""
    flags = b"\1\1\1\0"
    rows = b'"f","f","f",\n' * 50_000
    assert native_csv(rows, flags) == b"false,false,false,\r\n" * 50_000


@pytest.mark.parametrize("args,error", [
    ((b"a,b\n", "\0\0"), TypeError),
    (("a,b\n", b"\0\0"), TypeError),
    ((b"a,b\n", b"\0"), ValueError),
    ((b"a,b\n", b"\0\1"), ValueError),
])
def test_wrong_csv_arguments_are_refused(args, error):
    with pytest.raises(error):
        native_csv(*args)


def test_the_c_render_is_memory_safe(tmp_path):
    """The tests above (JSON and CSV) once more against a build with AddressSanitizer and UBSan
    (gcc's): a read or write outside a buffer fails them even where it would not
    crash. A mutation that dropped the check for a value too many passed every
    other test here now and then, reading past the separators' array."""
    import subprocess
    import sys
    import sysconfig

    gcc = shutil.which("gcc")
    libasan = subprocess.run([gcc, "-print-file-name=libasan.so"], capture_output=True,
                             text=True).stdout.strip() if gcc else ""
    if not os.path.isabs(libasan):
        missing("REQUIRE_NATIVE", "no gcc with AddressSanitizer")
    built = tmp_path / "_copyrender.so"
    subprocess.run([gcc, "-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                    "-fno-omit-frame-pointer", "-fPIC", "-shared",
                    "-I", sysconfig.get_paths()["include"], str(SOURCE), "-o", str(built)],
                   check=True)
    runner = (
        "import importlib.util, sys\n"
        "spec = importlib.util.spec_from_file_location('guest_formats._copyrender', sys.argv[1])\n"
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        "sys.modules['guest_formats._copyrender'] = module\n"
        "import guest_formats.json_format as j, guest_formats.csv_format as c\n"
        "assert j.native_render is module.json_rows and c.native_csv is module.csv_rows\n"
        "import pytest\n"
        "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', '-k', 'not memory_safe', "
        "sys.argv[2]]))\n")
    # PYTHONMALLOC=malloc: every object its own allocation, which ASan watches (it
    # does not see inside the arenas of Python's small-object allocator)
    env = dict(os.environ, LD_PRELOAD=libasan, ASAN_OPTIONS="detect_leaks=0",
               PYTHONMALLOC="malloc", UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")
    done = subprocess.run([sys.executable, "-c", runner, str(built), __file__], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert " passed" in done.stdout and "AddressSanitizer" not in done.stderr
