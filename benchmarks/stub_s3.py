#!/usr/bin/env python
"""A minimal S3 server that keeps objects in memory: a measuring instrument for
``s3_benchmark.py --stub``, not a test double (the tests and ``make bench`` use moto).

    python benchmarks/stub_s3.py PORT [CERT KEY]

It answers only what a backup and the benchmark's checks ask (buckets, PutObject,
multipart uploads, ranged GetObject, HeadObject, ListObjectsV2,
ListMultipartUploads, DeleteObject; no object lock, no versions: ``?versions`` is
answered as a plain listing, as some minimal stores do) and checks no signature or
checksum; a PUT without a ``Content-Length`` (a chunked body) is refused, as S3
refuses it: the point is to cost almost nothing, so that a backup to it shows what
the backup's own S3 client costs, apart from moto's work on the same cores
(docs/performance.md). Each part's ``x-amz-checksum-*`` header is answered back, as
S3 does; the completed object's ETag is S3's ``MD5-of-part-MD5s-N``. One request
per thread, no Nagle delay on the answers.
"""

from __future__ import annotations

import hashlib
import re
import ssl
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape

XML = '<?xml version="1.0" encoding="UTF-8"?>'
OBJECTS: dict[tuple[str, str], tuple[bytes, str]] = {}  # (bucket, key) -> (bytes, ETag)
UPLOADS: dict[str, dict] = {}  # upload id -> {"bucket", "key", "parts": {n: (bytes, md5)}}
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and "100 Continue", as botocore expects
    disable_nagle_algorithm = True  # else a small answer waits out the client's delayed ACK

    def log_message(self, *args) -> None:
        pass

    def _target(self) -> tuple[str, str, dict]:
        url = urlsplit(self.path)
        bucket, _, key = url.path.lstrip("/").partition("/")
        return unquote(bucket), unquote(key), parse_qs(url.query, keep_blank_values=True)

    def _body(self) -> bytes:
        size = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(size) if size else b""

    def _answer(self, status: int = 200, body: bytes = b"", headers=()) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, code: str) -> None:
        self._answer(status, f"{XML}<Error><Code>{code}</Code><Message>{code}</Message>"
                             f"</Error>".encode(), [("Content-Type", "application/xml")])

    def _xml(self, text: str) -> None:
        self._answer(200, (XML + text).encode(), [("Content-Type", "application/xml")])

    def do_PUT(self) -> None:
        bucket, key, query = self._target()
        if "Content-Length" not in self.headers:  # chunked (an aws-chunked trailer): S3 says
            self.close_connection = True
            return self._error(411, "MissingContentLength")
        data = self._body()
        if not key:  # CreateBucket
            return self._answer()
        md5 = hashlib.md5(data).hexdigest()
        if "partNumber" in query:
            upload = UPLOADS.get(query["uploadId"][0])
            if upload is None:
                return self._error(404, "NoSuchUpload")
            upload["parts"][int(query["partNumber"][0])] = (data, md5)
            echo = [(h, v) for h, v in self.headers.items()
                    if h.lower().startswith("x-amz-checksum-") and h.lower() != "x-amz-checksum-algorithm"]
            return self._answer(200, b"", [("ETag", f'"{md5}"'), *echo])
        with LOCK:
            OBJECTS[bucket, key] = (data, f'"{md5}"')
        self._answer(200, b"", [("ETag", f'"{md5}"')])

    def do_POST(self) -> None:
        bucket, key, query = self._target()
        self._body()
        if "uploads" in query:
            upload_id = uuid.uuid4().hex
            UPLOADS[upload_id] = {"bucket": bucket, "key": key, "parts": {}}
            return self._xml(f"<InitiateMultipartUploadResult><Bucket>{escape(bucket)}</Bucket>"
                             f"<Key>{escape(key)}</Key><UploadId>{upload_id}</UploadId>"
                             "</InitiateMultipartUploadResult>")
        if "uploadId" in query:
            upload = UPLOADS.pop(query["uploadId"][0], None)
            if upload is None:
                return self._error(404, "NoSuchUpload")
            parts = [upload["parts"][n] for n in sorted(upload["parts"])]
            digest = hashlib.md5(b"".join(bytes.fromhex(md5) for _, md5 in parts)).hexdigest()
            etag = f'"{digest}-{len(parts)}"'
            with LOCK:
                OBJECTS[bucket, key] = (b"".join(data for data, _ in parts), etag)
            return self._xml(f"<CompleteMultipartUploadResult><Bucket>{escape(bucket)}</Bucket>"
                             f"<Key>{escape(key)}</Key><ETag>{escape(etag)}</ETag>"
                             "</CompleteMultipartUploadResult>")
        self._error(400, "InvalidRequest")

    def do_GET(self) -> None:
        bucket, key, query = self._target()
        if not key:
            return self._list(bucket, query)
        found = OBJECTS.get((bucket, key))
        if found is None:
            return self._error(404, "NoSuchKey")
        data, etag = found
        headers = [("ETag", etag), ("Last-Modified", "Thu, 01 Jan 2026 00:00:00 GMT"),
                   ("Accept-Ranges", "bytes")]
        ranged = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
        if ranged and self.command == "GET":
            start = int(ranged[1])
            end = min(int(ranged[2]) if ranged[2] else len(data) - 1, len(data) - 1)
            headers.append(("Content-Range", f"bytes {start}-{end}/{len(data)}"))
            return self._answer(206, data[start:end + 1], headers)
        if self.command == "HEAD":
            self.send_response(200)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            return self.end_headers()
        self._answer(200, data, headers)

    do_HEAD = do_GET

    def _list(self, bucket: str, query: dict) -> None:
        if "object-lock" in query:
            return self._error(404, "ObjectLockConfigurationNotFoundError")
        prefix = query.get("prefix", [""])[0]
        if "uploads" in query:
            items = "".join(f"<Upload><Key>{escape(u['key'])}</Key><UploadId>{uid}</UploadId>"
                            "<Initiated>2026-01-01T00:00:00.000Z</Initiated></Upload>"
                            for uid, u in list(UPLOADS.items())
                            if u["bucket"] == bucket and u["key"].startswith(prefix))
            return self._xml(f"<ListMultipartUploadsResult><Bucket>{escape(bucket)}</Bucket>"
                             f"<IsTruncated>false</IsTruncated>{items}</ListMultipartUploadsResult>")
        with LOCK:
            keys = sorted((k, len(d), e) for (b, k), (d, e) in OBJECTS.items()
                          if b == bucket and k.startswith(prefix))
        items = "".join(f"<Contents><Key>{escape(k)}</Key><LastModified>2026-01-01T00:00:00.000Z"
                        f"</LastModified><ETag>{escape(e)}</ETag><Size>{n}</Size>"
                        "<StorageClass>STANDARD</StorageClass></Contents>" for k, n, e in keys)
        self._xml(f"<ListBucketResult><Name>{escape(bucket)}</Name><Prefix>{escape(prefix)}"
                  f"</Prefix><KeyCount>{len(keys)}</KeyCount><MaxKeys>{max(1000, len(keys))}"
                  f"</MaxKeys><IsTruncated>false</IsTruncated>{items}</ListBucketResult>")

    def do_DELETE(self) -> None:
        bucket, key, query = self._target()
        if "uploadId" in query:
            UPLOADS.pop(query["uploadId"][0], None)
        else:
            with LOCK:
                OBJECTS.pop((bucket, key), None)
        self._answer(204)


def main(argv: list[str]) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", int(argv[0])), Handler)
    server.daemon_threads = True
    if len(argv) == 3:  # over HTTPS with this certificate and key
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(argv[1], argv[2])
        server.socket = context.wrap_socket(server.socket, server_side=True)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
