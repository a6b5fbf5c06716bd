"""What the load test's modules share: its constants, the names of the public requests
in the report, and two helpers (a query on a database, a ``manage.py`` command).

The load test itself is ``load_test.py``; see benchmarks/README.md.
"""

from __future__ import annotations

import subprocess
import sys

import psycopg2

import generate_data as gen

ROOT = gen.ROOT
ADMIN = ("load-admin@example.com", "load-admin-password-1")
TIMEOUT = 120  # seconds per socket operation; a timeout counts as an error
STALLED_LENGTH = 4 * 1024 * 1024  # what a stalled upload announces
STALLED_SENT = 64 * 1024  # what it sends of its file part before stalling
FORM_GET, FORM_POST, PAGE = "public form: GET register", "public form: POST register", "public page: GET /"


def manage(env, *args):
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def query(url, sql, params=None):
    conn = psycopg2.connect(gen.libpq_url(url), connect_timeout=10)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()
    finally:
        conn.close()
