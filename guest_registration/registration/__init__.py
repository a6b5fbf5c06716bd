"""The public guest sign-up: one page per trip."""

from .views import bp

__all__ = ["bp"]
