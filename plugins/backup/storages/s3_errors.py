"""What an S3 error means, in words that are safe to show: its code, never its
text (which may quote a request, a key or a signature)."""

from __future__ import annotations


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
    if "Credentials" in name:
        return "no credentials are configured"
    return f"{name}"


def error_code(exc: Exception) -> str | None:
    return getattr(exc, "response", {}).get("Error", {}).get("Code") if hasattr(
        exc, "response") else None


__all__ = ["error_code", "error_reason"]
