"""What the commands print of the data (names, e-mail addresses, trip titles
from the live database or an archive, some typed by anonymous visitors of the
public form): control characters shown escaped (``\\x1b``), so that a value
cannot drive the operator's terminal (set its title, clear the screen, move the
cursor over lines printed before it). JSON output needs nothing: ``json.dumps``
escapes them."""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def plain(text) -> str:
    """``text`` with every C0 and C1 control character (newlines and tabs too: a
    line of data stays one line) written as ``\\xNN``."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))


__all__ = ["plain"]
