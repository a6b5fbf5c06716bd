"""The erasure ledger (issue 22): an append-only, chained, keyed file of erasures
outside the database, copied beside the archives and merged back before a
restore. No Flask app: temporary folders, a LocalStorage and moto's S3 server."""

from __future__ import annotations

import json
import multiprocessing
import stat
from pathlib import Path

import pytest

from guest_backup.errors import BackupError
from guest_backup.ops.ledger import (GENESIS, LEDGER_NAME, ErasureLedger, LedgerBroken, keyed_hash,
                                     merge, verify_lines)
from guest_backup.ops.ledger_copies import collect, publish
from guest_backup.storages import StorageError, StorageUnreachable
from guest_backup.storages.local import LocalStorage
from tests.test_remote import s3, BUCKET, PREFIX  # noqa: F401

EMAIL, FIRST, LAST, DOCUMENT = "Jana.Novak@Example.org", "Jana", "Nováková", "AB 123 456"
ERASURES = [
    ("guest", [11], [3], {"email": [EMAIL], "document_number": [DOCUMENT],
                          "first_name": [FIRST], "last_name": [LAST]}),
    ("registration", [12, 13], [4], {"email": ["petr@example.cz"]}),
    ("retention", [14, 15, 16], [5, 6], {"document_number": ["XY9988776"]}),
]
RAW = [EMAIL, EMAIL.lower(), FIRST, LAST, DOCUMENT, DOCUMENT.replace(" ", ""), "petr@example.cz",
       "XY9988776"]


@pytest.fixture
def ledger(tmp_path) -> ErasureLedger:
    return ErasureLedger.in_folder(tmp_path / "instance")


@pytest.fixture
def backups(tmp_path) -> LocalStorage:
    return LocalStorage(tmp_path / "instance" / "backups")


def s3_storage():
    from guest_backup.storages.s3 import S3StorageType

    return S3StorageType().open(f"s3://{BUCKET}/{PREFIX}", {})


def fill(ledger: ErasureLedger, erasures=ERASURES) -> list[dict]:
    return [ledger.append(kind, g, r, ids) for kind, g, r, ids in erasures]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_appends_come_back_in_order_without_personal_data(ledger, backups, s3):
    written = fill(ledger)
    remote = s3_storage()
    publish(ledger, [backups, remote])
    got = list(ledger.entries())
    assert got == written
    assert [(e["seq"], e["kind"], e["guest_ids"], e["registration_ids"]) for e in got] == [
        (1, "guest", [11], [3]), (2, "registration", [12, 13], [4]),
        (3, "retention", [14, 15, 16], [5, 6])]
    assert got[0]["prev"] == GENESIS and got[1]["prev"] == got[0]["mac"]
    assert got[0]["hashes"]["email"] == [ledger.hash_value("email", EMAIL)]
    assert got[0]["time"].endswith("Z")
    assert mode(ledger.path) == 0o600 and mode(ledger.key_path) == 0o600
    assert len(ledger.key_path.read_text().strip()) == 64
    local_copy = backups.folder / LEDGER_NAME
    assert mode(local_copy) == 0o600
    s3_copy = s3.get_object(Bucket=BUCKET, Key=f"{PREFIX}/{LEDGER_NAME}")["Body"].read()
    for data in (ledger.path.read_bytes(), local_copy.read_bytes(), s3_copy):
        assert data == ledger.path.read_bytes()
        for value in RAW:
            assert value.encode() not in data and value.lower().encode() not in data
            assert json.dumps(value).encode() not in data  # not even JSON-escaped
    assert backups.list() == [] and remote.list() == []  # never listed as an archive


def _edit_guest_id(lines):
    record = json.loads(lines[1])
    record["guest_ids"] = [99]
    lines[1] = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
    return lines, 2


def _delete_line(lines):
    del lines[1]
    return lines, 2


def _swap_lines(lines):
    lines[1], lines[2] = lines[2], lines[1]
    return lines, 2


def _truncate_mac(lines):
    record = json.loads(lines[2])
    record["mac"] = record["mac"][:40]
    lines[2] = json.dumps(record).encode()
    return lines, 3


def _junk(lines):
    return lines + [b"hello"], 4


@pytest.mark.parametrize("tamper", [_edit_guest_id, _delete_line, _swap_lines, _truncate_mac,
                                    _junk])
def test_a_tampered_copy_breaks_the_chain(ledger, backups, tamper):
    fill(ledger)
    publish(ledger, [backups])
    copy = backups.folder / LEDGER_NAME
    lines, bad = tamper(copy.read_bytes().splitlines())
    copy.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(LedgerBroken) as broken:
        collect(ledger, [backups])
    message = str(broken.value)
    assert f"the local storage ({backups.folder})" in message and f"line {bad} " in message
    with pytest.raises(LedgerBroken, match=f"in my copy is broken: line {bad} "):
        verify_lines(lines, ledger.key(), "my copy")
    with pytest.raises(LedgerBroken, match="my copy"):
        merge({"good": ledger.path.read_bytes(), "my copy": copy.read_bytes()}, ledger.key())
    with pytest.raises(LedgerBroken):  # the tampered copy is never overwritten by publish
        publish(ledger, [backups])
    assert copy.read_bytes() == b"\n".join(lines) + b"\n"


def test_a_tampered_local_file_stops_appends(ledger):
    fill(ledger)
    lines = ledger.path.read_bytes().splitlines()
    ledger.path.write_bytes(b"\n".join(_swap_lines(lines)[0]) + b"\n")
    with pytest.raises(LedgerBroken, match=r"the instance folder .* line 2 "):
        ledger.append("guest", [1])
    with pytest.raises(LedgerBroken, match="line 2 "):
        list(ledger.entries())


def test_a_tampered_s3_copy_is_named(ledger, s3):
    fill(ledger)
    remote = s3_storage()
    publish(ledger, [remote])
    lines, _ = _edit_guest_id(remote.get_extra(LEDGER_NAME).splitlines())
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/{LEDGER_NAME}", Body=b"\n".join(lines) + b"\n")
    with pytest.raises(LedgerBroken, match=rf"remote storage \(s3://{BUCKET}/{PREFIX}\).* line 2 "):
        collect(ledger, [remote])


def test_a_lost_instance_ledger_comes_back_from_the_backup_folder(ledger, backups):
    written = fill(ledger)
    publish(ledger, [backups])
    ledger.path.unlink()
    assert collect(ledger, [backups]) == written
    assert list(ledger.entries()) == written and mode(ledger.path) == 0o600
    assert ledger.append("email", identifiers={"email": ["x@example.org"]})["seq"] == 4


def test_a_lost_instance_ledger_comes_back_from_s3(ledger, backups, s3):
    written = fill(ledger)
    remote = s3_storage()
    publish(ledger, [remote])
    ledger.path.unlink()
    assert collect(ledger, [backups, remote]) == written
    assert list(ledger.entries()) == written


def test_an_unreachable_storage_is_skipped_only_when_another_copy_exists(ledger, backups, s3):
    written = fill(ledger)
    remote = s3_storage()
    publish(ledger, [remote])
    s3.server.stop()
    warnings = []
    assert collect(ledger, [backups, remote], warn=warnings.append) == written
    assert len(warnings) == 1 and f"s3://{BUCKET}/{PREFIX}" in warnings[0]
    ledger.path.unlink()
    with pytest.raises(StorageUnreachable, match="no copy of the erasure ledger could be read"):
        collect(ledger, [backups, remote])
    ledger.append("guest", [1])
    with pytest.raises(StorageError, match=f"s3://{BUCKET}/{PREFIX}") as failed:
        publish(ledger, [remote, backups])
    assert "moto-secret" not in str(failed.value)
    assert (backups.folder / LEDGER_NAME).read_bytes() == ledger.path.read_bytes()  # still tried


def test_nothing_anywhere_is_an_empty_ledger(ledger, backups):
    assert collect(ledger, [backups]) == []
    assert not ledger.path.exists() and not ledger.key_path.exists()


def test_a_copy_behind_merges_and_a_fork_is_refused(ledger, backups, tmp_path):
    written = fill(ledger, ERASURES[:2])
    publish(ledger, [backups])
    other = ErasureLedger(tmp_path / "other.jsonl", ledger.key_path)
    other.path.write_bytes(ledger.path.read_bytes())
    written.append(ledger.append("guest", [21]))
    assert merge({"here": ledger.path.read_bytes(), "behind": (backups.folder / LEDGER_NAME)
                  .read_bytes(), "none": None}, ledger.key()) == written
    assert collect(ledger, [backups]) == written
    other.append("guest", [22])
    with pytest.raises(LedgerBroken, match="differ from line 3 on .a fork"):
        merge({"here": ledger.path.read_bytes(), "there": other.path.read_bytes()},
              ledger.key())
    publish(ledger, [backups])
    with pytest.raises(LedgerBroken, match="a fork"):  # the fork is not published over it
        publish(other, [backups])
    with pytest.raises(LedgerBroken, match="a fork"):
        collect(other, [backups])


def test_a_new_ledger_never_overwrites_a_longer_copy(ledger, backups):
    fill(ledger)
    publish(ledger, [backups])
    ledger.path.unlink()
    ledger.append("guest", [1])  # a new server's first erasure before any collect
    with pytest.raises(LedgerBroken):
        publish(ledger, [backups])
    assert len((backups.folder / LEDGER_NAME).read_bytes().splitlines()) == 3


def test_a_lost_key_is_never_replaced_silently(ledger, backups):
    fill(ledger)
    publish(ledger, [backups])
    key = ledger.key_path.read_bytes()
    ledger.key_path.unlink()
    with pytest.raises(BackupError, match="key .* is missing: put back"):
        ledger.append("guest", [1])
    assert not ledger.key_path.exists()
    ledger.path.unlink()
    with pytest.raises(BackupError, match="key .* is missing"):
        collect(ledger, [backups])
    ErasureLedger(ledger.path, ledger.key_path).key()  # an empty ledger: a new key
    with pytest.raises(LedgerBroken, match="line 1 does not match its mac .* another ledger key"):
        collect(ledger, [backups])
    ledger.key_path.write_bytes(key)
    assert len(collect(ledger, [backups])) == 3


def _append_many(folder: str, who: int, start, count: int) -> None:
    ledger = ErasureLedger.in_folder(folder)
    start.wait(30)
    for i in range(count):
        ledger.append("guest", [who * 1000 + i], [who], {"email": [f"g{who}-{i}@example.org"]})


def test_two_processes_appending_at_once_keep_one_chain(ledger):
    ledger.key()  # one key, made before the race
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    workers = [ctx.Process(target=_append_many, args=(str(ledger.path.parent), who, start, 50))
               for who in (1, 2)]
    for w in workers:
        w.start()
    start.set()
    for w in workers:
        w.join(120)
        assert w.exitcode == 0
    got = list(ledger.entries())
    assert [e["seq"] for e in got] == list(range(1, 101))
    assert sorted(e["guest_ids"][0] for e in got) == sorted(
        who * 1000 + i for who in (1, 2) for i in range(50))
    assert len(verify_lines(ledger.path.read_bytes().splitlines(), ledger.key())) == 100


def test_threads_with_separate_ledgers_keep_one_chain(ledger):
    import threading

    ledger.key()
    start = threading.Event()
    threads = [threading.Thread(target=_append_many, args=(str(ledger.path.parent), who, start, 25))
               for who in (1, 2, 3)]
    for t in threads:
        t.start()
    start.set()
    for t in threads:
        t.join(60)
    assert [e["seq"] for e in ledger.entries()] == list(range(1, 76))


def test_keyed_hashes_ignore_case_and_spaces_and_depend_on_the_key(ledger, tmp_path):
    assert ledger.hash_value("email", "  Jana.Novak@EXAMPLE.org ") == ledger.hash_value(
        "email", "jana.novak@example.org")
    assert ledger.hash_value("document_number", "ab 123\t456") == ledger.hash_value(
        "document_number", "AB123456")
    assert ledger.hash_value("email", "a@example.org") != ledger.hash_value(
        "last_name", "a@example.org")  # the field is part of the hash
    other = ErasureLedger.in_folder(tmp_path / "elsewhere")
    assert other.hash_value("email", EMAIL) != ledger.hash_value("email", EMAIL)
    assert keyed_hash(ledger.key(), "email", EMAIL) == ledger.hash_value("email", EMAIL)
    assert len(ledger.hash_value("email", EMAIL)) == 64


def test_bad_appends_are_refused(ledger):
    with pytest.raises(ValueError):
        ledger.append("everything", [1])
    with pytest.raises(ValueError):
        ledger.append("guest", ["1"])
    with pytest.raises(ValueError):
        ledger.append("guest", [1], identifiers={"E-mail Address": ["a@b.c"]})
    with pytest.raises(ValueError):
        ledger.append("guest")
    assert not ledger.path.exists()


def test_extra_files_only_by_allowed_name(backups, s3):
    remote = s3_storage()
    for storage in (backups, remote):
        assert storage.get_extra(LEDGER_NAME) is None
        for name in ("../evil", "system_backup_20250101_000000.zip", "notes.txt"):
            with pytest.raises(StorageError):
                storage.put_extra(name, b"x")
            with pytest.raises(StorageError):
                storage.get_extra(name)
        storage.put_extra(LEDGER_NAME, b"one\n")
        storage.put_extra(LEDGER_NAME, b"two\n")
        assert storage.get_extra(LEDGER_NAME) == b"two\n"
        assert storage.list() == []
    assert sorted(p.name for p in backups.folder.iterdir()) == [LEDGER_NAME]  # no temp left


def test_s3_extra_files_are_sent_with_content_md5(s3, monkeypatch):
    import base64
    import hashlib

    remote = s3_storage()
    sent = []
    real = remote.client.put_object
    monkeypatch.setattr(remote.client, "put_object", lambda **kw: sent.append(kw) or real(**kw))
    remote.put_extra(LEDGER_NAME, b"line\n")
    assert sent[0]["ContentMD5"] == base64.b64encode(hashlib.md5(b"line\n").digest()).decode()


def test_a_missing_file_remote_is_unreachable(tmp_path):
    gone = LocalStorage(tmp_path / "not-mounted", name="remote")
    with pytest.raises(StorageUnreachable, match="is not there"):
        gone.get_extra(LEDGER_NAME)
