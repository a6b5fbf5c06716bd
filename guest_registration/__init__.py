"""Guest registration host app.

Plugin authors need only ``hookimpl`` (and ``hookspec`` to publish hooks of
their own) from here, plus the types in ``guest_registration.exports`` /
``guest_registration.admin``; see ``guest_registration.hookspecs`` for the contract.

This package imports only :mod:`.registry` (the markers) and :mod:`.app` (the
factory); no module of the host imports the package itself, so it sits in no
import cycle.
"""

from __future__ import annotations

from .app import create_app
from .registry import hookimpl, hookspec

__all__ = ["create_app", "hookimpl", "hookspec", "__version__"]
__version__ = "0.1.0"
