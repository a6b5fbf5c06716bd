"""The host's configuration errors, below :mod:`guest_registration.config` and
:mod:`guest_registration.instance_folder` (both raise them)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A setting's value cannot be used (safe to show: it names the setting)."""


class SharedFolderError(ConfigError):
    """A setting names a shared folder (sticky, as ``/tmp``) for the app's own."""


__all__ = ["ConfigError", "SharedFolderError"]
