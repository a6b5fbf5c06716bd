"""What an S3 error means, in words that are safe to show: its code, never its
text (which may quote a request, a key or a signature)."""

from __future__ import annotations

from typing import Mapping


def error_reason(exc: Exception) -> str:
    """A short reason from a botocore error: its code, never its text (no secrets)."""
    code = error_code(exc)
    if code in ("NoSuchBucket",):
        return "the bucket does not exist"
    if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
        return "access denied (check the credentials)"
    if code:
        return f"the storage answered {code}"
    name = type(exc).__name__
    if "Endpoint" in name or "Connect" in name or "Timeout" in name:
        return "it could not be reached"
    if "Streaming" in name or "IncompleteRead" in name or name == "HTTPClientError":
        return f"the connection to it broke off ({name})"
    if "Credentials" in name:
        return "no credentials are configured"
    return f"{name}"


def error_code(exc: Exception) -> str | None:
    """The code of the storage's answer; None when there was no answer. botocore's
    connection errors (ConnectionClosedError, ReadTimeoutError,
    ResponseStreamingError) have a ``response`` that is None: reading it as a
    mapping raised AttributeError inside every handler that sorts S3 errors, so an
    outage ended in a crash instead of "it could not be reached"."""
    response = getattr(exc, "response", None)
    error = response.get("Error") if isinstance(response, Mapping) else None
    code = error.get("Code") if isinstance(error, Mapping) else None
    return code if isinstance(code, str) and code else None


__all__ = ["error_code", "error_reason"]
