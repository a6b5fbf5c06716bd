"""Prompt ACKs on the S3 client's connections (Linux's ``TCP_QUICKACK``).

A server that leaves Nagle's algorithm on for the connections it accepts (moto's,
or any S3 served by Werkzeug or ``http.server``) writes an answer's headers and
its body as two writes, two TLS records over HTTPS: the second waits until the
client has acknowledged the first. Linux delays that acknowledgement when the
connection looks interactive, which a request followed by its answer always
does, so every answer stalls. Measured against moto over HTTPS (one fresh
connection per request, medians of 30): a 300-byte PutObject 48 ms,
GetObject 16.6 ms, ListObjectsV2 17.3 ms; with ``TCP_QUICKACK`` set after each
send, 4.5, 4.7 and 5.5 ms.

The option is not permanent: Linux leaves quick-ACK mode again when the
connection sends soon after it received, so it is set after every send (one
``setsockopt``). It changes when the client's ACKs go, never what is sent or
checked; a server that answers in one write (AWS S3) sees an ACK a little
earlier and nothing else. Where the system has no such option, nothing changes.

Only this storage's own client is changed (its botocore session's pool classes),
never botocore's classes for other clients in the process.
"""

from __future__ import annotations

import functools
import socket
from typing import Any

QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)


def _quickack(sock: Any) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, QUICKACK, 1)
    except (AttributeError, OSError):  # no socket (a proxy's TLS-in-TLS transport), or closed
        pass


class _PromptAcks:
    """Mixed into botocore's connection classes: ACK the answer at once."""

    sock: Any

    def send(self, data: Any) -> Any:
        sent = super().send(data)  # type: ignore[misc]
        _quickack(self.sock)
        return sent


@functools.cache
def _pool_classes() -> dict[str, type]:
    """botocore's pools for each scheme, with connections that ACK at once (built on
    first use: botocore is imported only by the client's own builder)."""
    from botocore.awsrequest import (AWSHTTPConnection, AWSHTTPConnectionPool,
                                     AWSHTTPSConnection, AWSHTTPSConnectionPool)

    pools = {}
    for scheme, pool, connection in (("http", AWSHTTPConnectionPool, AWSHTTPConnection),
                                     ("https", AWSHTTPSConnectionPool, AWSHTTPSConnection)):
        prompt = type(f"Prompt{connection.__name__}", (_PromptAcks, connection), {})
        pools[scheme] = type(f"Prompt{pool.__name__}", (pool,), {"ConnectionCls": prompt})
    return pools


def prompt_acks(client: Any) -> bool:
    """Give ``client`` (a botocore client, before its first request) connections that
    ACK at once. False, with the client left as it was, where the system has no
    ``TCP_QUICKACK`` or botocore's session is laid out otherwise."""
    session = getattr(getattr(client, "_endpoint", None), "http_session", None)
    manager = getattr(session, "_manager", None)
    if QUICKACK is None or manager is None or not hasattr(session, "_pool_classes_by_scheme"):
        return False
    pools = dict(_pool_classes())
    session._pool_classes_by_scheme = pools  # what its proxy managers are given too
    manager.pool_classes_by_scheme = pools
    return True
