#!/usr/bin/env python
"""Fill a PostgreSQL database with guests for the export benchmark, fast.

    .venv/bin/python benchmarks/generate_data.py postgresql://postgres@127.0.0.1:5432/gr_bench \
        [--rows 500000] [--small-rows 1000] [--admin-email E --admin-password P]

Creates the database if it does not exist, creates the tables with
``manage.py setup`` (the app's own schema, optionally with an admin user), then
inserts everything with ``INSERT ... SELECT ... FROM generate_series`` (no ORM):

* ``--rows`` guests created in June 2025 (the "large month"), spread evenly over
  the month, three guests per registration, over a dozen trips;
* ``--small-rows`` guests in July 2025 (the "small month"), for the memory
  comparison.

Names include commas, quotes and non-ASCII letters (``Nováková``, ``O'Brien``,
``Doe, Jr.``, ``Mary "Molly"``) so the CSV/JSON quoting paths are exercised.
No value contains a line break, so an export's rows can be counted by lines.

New rows get ids after the current maximum, so the script can be run on a
database that already holds data (the sequences are moved past the new ids).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import psycopg2
from psycopg2 import sql as pgsql

ROOT = Path(__file__).resolve().parent.parent
LARGE_MONTH = (2025, 6)
SMALL_MONTH = (2025, 7)
GUESTS_PER_REGISTRATION = 3

FIRST_NAMES = [
    "Jan", "Petra", "Jiří", "Zoë", "José", "Anne-Marie", "D'Arcy", "Łukasz", "Søren",
    'Mary "Molly"', "Björn", "Eva", "Thomas", "Ægir", "Chloé", "Ľubomír", "Ana, María",
    "Noah", "François", "Mia",
]
LAST_NAMES = [
    "Nováková", "O'Brien", "Doe, Jr.", "Müller", "Smith", "Dvořák", "García Márquez",
    "van der Berg", "Øster", '"The Rock" Johnson', "Šťastný", "Brown", "Kowalski",
    "Żółć", "Schmidt", "L'Estrange", "Nguyễn", "Černá", "Taylor", "Hernández",
]
TRIP_TITLES = [
    "Šumava hiking", 'Prague, "the golden city"', "Alps: Großglockner", "Tatras, High",
    "Danube by bike", "Krkonoše winter camp", "Vienna & Bratislava", "České Švýcarsko",
]
LANGUAGES = ["en", "cs", "de"]
STATUSES = ["approved", "pending", "approved", "rejected"]
DOCUMENT_TYPES = ["passport", "id_card", "driving_license"]


def compile_bytecode() -> str:
    """Compile the project's modules as an installed wheel has them (pip compiles on
    install): a checkout run with ``PYTHONDONTWRITEBYTECODE=1`` would otherwise
    recompile them at every start and time the compiler. Returns a note for the report."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", "guest_registration", "plugins",
                    "manage.py"], cwd=ROOT, check=True, capture_output=True, timeout=300)
    return "the project's bytecode compiled first (python -m compileall), as a wheel has it"


def libpq_url(url: str) -> str:
    """A SQLAlchemy-style URL (``postgresql+psycopg2://``) as a libpq URI."""
    for prefix in ("postgresql+psycopg2://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix):]
    return url


def split_url(url: str) -> tuple[str, str]:
    """(URL of the server's ``postgres`` maintenance database, database name)."""
    base, _, rest = libpq_url(url).rpartition("/")
    name, _, query = rest.partition("?")
    if not name:
        raise SystemExit(f"the database URL must name a database: {url}")
    return f"{base}/postgres" + (f"?{query}" if query else ""), name


def database_exists(url: str) -> bool:
    admin_url, name = split_url(url)
    with psycopg2.connect(admin_url, connect_timeout=10) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        found = cur.fetchone() is not None
    conn.close()
    return found


def create_database(url: str) -> bool:
    """Create the database if missing; True if it was created."""
    if database_exists(url):
        return False
    admin_url, name = split_url(url)
    conn = psycopg2.connect(admin_url, connect_timeout=10)
    try:
        conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        with conn.cursor() as cur:
            cur.execute(pgsql.SQL("CREATE DATABASE {} ENCODING 'UTF8' TEMPLATE template0")
                        .format(pgsql.Identifier(name)))
    finally:
        conn.close()
    return True


def drop_database(url: str) -> None:
    admin_url, name = split_url(url)
    conn = psycopg2.connect(admin_url, connect_timeout=10)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                        .format(pgsql.Identifier(name)))
    finally:
        conn.close()


def run_setup(url: str, env: dict[str, str], admin_email: str | None,
              admin_password: str | None) -> None:
    """``manage.py setup``: the app's tables (and an admin user if asked)."""
    cmd = [sys.executable, "manage.py", "setup"]
    if admin_email:
        cmd += ["--admin-email", admin_email, "--admin-password", admin_password or ""]
    env = {**env, "DATABASE_URL": url}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed ({proc.returncode}):\n"
                           f"{proc.stdout}{proc.stderr}")


# --- shared by the archive benchmarks (backup, restore, S3) ------------------------------

def add_archive_arguments(parser: argparse.ArgumentParser, database: str,
                          deadline: int) -> None:
    """The options every archive benchmark has: its database, the uploads to put
    in it, --replace, --keep-db and a --deadline."""
    parser.add_argument("--database-url",
                        default=f"postgresql://postgres@127.0.0.1:5432/{database}")
    parser.add_argument("--files", type=int, default=50, help="ordinary upload files")
    parser.add_argument("--photos", type=int, default=20, help="UUID-named guest photos")
    parser.add_argument("--replace", action="store_true",
                        help="drop the benchmark's databases if they exist")
    parser.add_argument("--keep-db", action="store_true",
                        help="do not drop the benchmark's databases at the end")
    parser.add_argument("--deadline", type=int, default=deadline,
                        help="abort after this many seconds")


def age_recipient(work: Path) -> str:
    """A fresh age identity (``pyrage``) in ``work/key.txt`` (0600); its recipient,
    for ``BACKUP_AGE_RECIPIENTS`` (the --encrypted option of the archive benchmarks)."""
    from pyrage import x25519

    identity = x25519.Identity.generate()
    key = work / "key.txt"
    key.touch(mode=0o600)
    key.write_text(f"# benchmark identity\n{identity}\n")
    return str(identity.to_public())


def sibling_url(url: str, suffix: str) -> str:
    """``url`` with ``suffix`` appended to its database name (query kept)."""
    base, _, rest = url.rpartition("/")
    name, sep, query = rest.partition("?")
    return f"{base}/{name}{suffix}{sep}{query}"


def refuse_existing(urls, replace: bool) -> None:
    for url in urls:
        if database_exists(url) and not replace:
            raise SystemExit(f"database {split_url(url)[1]} exists; pass --replace to drop it")


def start_deadline(seconds: int) -> None:
    """SIGALRM after ``seconds``: the benchmark raises TimeoutError and cleans up."""
    import signal

    def on_alarm(*_):
        raise TimeoutError(f"the benchmark took longer than --deadline {seconds} s")
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)


def month_bounds(year: int, month: int) -> tuple[datetime, datetime]:
    end = datetime(year + 1, 1, 1) if month == 12 else datetime(year, month + 1, 1)
    return datetime(year, month, 1), end


# One month of data. Ids are offsets from the current maximum (%(t0)s, %(r0)s,
# %(g0)s); guest g belongs to registration (g-1)/3 and is created at
# start + (g-1) * (month length / n), so guest ids follow created_at.
TRIPS_SQL = """
INSERT INTO trip (id, title, start_date, end_date, max_guests, created_at)
SELECT %(t0)s + t,
       (%(titles)s::text[])[1 + mod(t - 1, cardinality(%(titles)s::text[]))] || ' ' || %(label)s
           || ' #' || t,
       %(start)s::date + t, %(start)s::date + t + 7, 50, %(start)s::timestamp - interval '60 days'
FROM generate_series(1, %(trips)s) AS t
"""
REGISTRATIONS_SQL = """
INSERT INTO registration (id, trip_id, email, language, status, created_at)
SELECT %(r0)s + r, %(t0)s + 1 + mod(r, %(trips)s),
       'guest' || (%(r0)s + r) || '@example.com',
       (%(languages)s::text[])[1 + mod(r, 3)],
       (%(statuses)s::text[])[1 + mod(r * 7, 4)],
       %(start)s::timestamp + (r - 1) * ((%(end)s::timestamp - %(start)s::timestamp) / %(regs)s)
FROM generate_series(1, %(regs)s) AS r
"""
GUESTS_SQL = """
INSERT INTO guest (id, registration_id, first_name, last_name, age_category, document_type,
                   document_number, document_photo, gdpr_consent, created_at)
SELECT %(g0)s + g, %(r0)s + 1 + (g - 1) / %(per_reg)s,
       (%(first)s::text[])[1 + mod(g * 7, cardinality(%(first)s::text[]))],
       (%(last)s::text[])[1 + mod(g * 13 + g / 97, cardinality(%(last)s::text[]))],
       CASE WHEN mod(g, 5) = 0 THEN 'child' ELSE 'adult' END,
       (%(doctypes)s::text[])[1 + mod(g, 3)],
       upper(substr(md5(g::text), 1, 9)),
       CASE WHEN mod(g, 4) = 0 THEN 'uploads/' || md5((%(g0)s + g)::text) || '.jpg' END,
       mod(g, 10) <> 0,
       %(start)s::timestamp + (g - 1) * ((%(end)s::timestamp - %(start)s::timestamp) / %(n)s)
FROM generate_series(1, %(n)s) AS g
"""


def insert_month(cur, year: int, month: int, guests: int, trips: int) -> None:
    if guests <= 0:
        return
    start, end = month_bounds(year, month)
    cur.execute("SELECT (SELECT coalesce(max(id), 0) FROM trip), "
                "(SELECT coalesce(max(id), 0) FROM registration), "
                "(SELECT coalesce(max(id), 0) FROM guest)")
    t0, r0, g0 = cur.fetchone()
    params = {
        "t0": t0, "r0": r0, "g0": g0, "start": start, "end": end, "n": guests,
        "trips": trips, "regs": -(-guests // GUESTS_PER_REGISTRATION),
        "per_reg": GUESTS_PER_REGISTRATION, "label": f"{year}-{month:02d}",
        "titles": TRIP_TITLES, "languages": LANGUAGES, "statuses": STATUSES,
        "first": FIRST_NAMES, "last": LAST_NAMES, "doctypes": DOCUMENT_TYPES,
    }
    for statement in (TRIPS_SQL, REGISTRATIONS_SQL, GUESTS_SQL):
        cur.execute(statement, params)


def fill(url: str, rows: int, small_rows: int) -> None:
    """Insert both months in one transaction, then fix sequences and VACUUM ANALYZE."""
    conn = psycopg2.connect(libpq_url(url), connect_timeout=10)
    try:
        with conn, conn.cursor() as cur:
            insert_month(cur, *LARGE_MONTH, guests=rows, trips=12)
            insert_month(cur, *SMALL_MONTH, guests=small_rows, trips=2)
            for table in ("trip", "registration", "guest"):
                cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                            f"(SELECT max(id) FROM {table}))")
        conn.autocommit = True  # VACUUM cannot run inside a transaction
        with conn.cursor() as cur:
            # visibility map + statistics, so the timed queries see a settled table
            cur.execute("VACUUM ANALYZE trip, registration, guest")
    finally:
        conn.close()


def generate(url: str, rows: int, small_rows: int, *, env: dict[str, str] | None = None,
             admin_email: str | None = None, admin_password: str | None = None,
             log=print) -> None:
    """Create (or reuse) the database, its tables, optionally an admin, and the data."""
    env = dict(os.environ if env is None else env)
    if create_database(url):
        log(f"created database {split_url(url)[1]}")
    tmp = None
    if not env.get("INSTANCE_PATH"):  # keep manage.py's secrets out of the repo's instance/
        tmp = tempfile.TemporaryDirectory(prefix="gr_bench_instance_")
        env["INSTANCE_PATH"] = tmp.name
    try:
        t = time.perf_counter()
        run_setup(url, env, admin_email, admin_password)
        log(f"tables ready ({time.perf_counter() - t:.1f} s)")
    finally:
        if tmp is not None:
            tmp.cleanup()
    t = time.perf_counter()
    fill(url, rows, small_rows)
    log(f"inserted {rows:,} guests in {LARGE_MONTH[0]}-{LARGE_MONTH[1]:02d} and "
        f"{small_rows:,} in {SMALL_MONTH[0]}-{SMALL_MONTH[1]:02d} "
        f"({time.perf_counter() - t:.1f} s, incl. VACUUM ANALYZE)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("database_url", help="e.g. postgresql://postgres@127.0.0.1:5432/gr_bench")
    parser.add_argument("--rows", type=int, default=500_000, help="guests in the large month")
    parser.add_argument("--small-rows", type=int, default=1000, help="guests in the small month")
    parser.add_argument("--admin-email")
    parser.add_argument("--admin-password")
    args = parser.parse_args(argv)
    if args.rows < 0 or args.small_rows < 0:
        parser.error("row counts must not be negative")
    generate(args.database_url, args.rows, args.small_rows,
             admin_email=args.admin_email, admin_password=args.admin_password)


if __name__ == "__main__":
    main()
