"""Where the app's files are: the instance folder and the template folders.

The package carries its own ``templates/`` and ``static/``, so an installed wheel
is complete. A site overrides any template by putting a file of the same
relative path in an override folder, searched before the package's own:

1. the folder the ``TEMPLATE_OVERRIDES`` setting names (it must exist);
2. ``<instance folder>/templates``, when it exists;
3. in a source checkout, its top-level ``templates/``, when it exists.

Blueprints' folders (Flask-Admin's, the plugins') come after all of these.

The instance folder (database, uploads, secrets) is ``INSTANCE_PATH`` when set;
else, in a source checkout, ``<checkout>/instance`` (Flask's default for a
package that is not installed); else, installed, ``$XDG_DATA_HOME/guest-registration``
(``~/.local/share/guest-registration``), never inside the virtualenv.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

#: the package folder (``guest_registration/``)
PACKAGE = Path(__file__).resolve().parent
#: the folder name of the instance under the user's data folder
DATA_FOLDER_NAME = "guest-registration"
#: files that mark a source checkout next to the package
CHECKOUT_MARKERS = ("manage.py", "setup.cfg")
#: folders packages are installed into: never a checkout
INSTALL_FOLDERS = ("site-packages", "dist-packages")


def checkout_root(package_dir: Path = PACKAGE) -> Path | None:
    """The source checkout holding the package (``manage.py`` or ``setup.cfg``
    next to it, not a site-packages folder), else ``None``."""
    root = Path(package_dir).parent
    if root.name in INSTALL_FOLDERS:
        return None
    if any((root / marker).is_file() for marker in CHECKOUT_MARKERS):
        return root
    return None


def user_data_folder(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_DATA_HOME/guest-registration``, else ``~/.local/share/guest-registration``
    (a relative ``XDG_DATA_HOME`` is ignored, as the XDG specification says)."""
    environ = os.environ if environ is None else environ
    data_home = environ.get("XDG_DATA_HOME", "")
    if not os.path.isabs(data_home):
        home = environ.get("HOME") or str(Path.home())
        data_home = os.path.join(home, ".local", "share")
    return Path(data_home) / DATA_FOLDER_NAME


def default_instance_path(package_dir: Path = PACKAGE,
                          environ: Mapping[str, str] | None = None) -> str:
    """The instance folder when ``create_app`` is not given one (see the module doc)."""
    environ = os.environ if environ is None else environ
    if environ.get("INSTANCE_PATH"):
        return environ["INSTANCE_PATH"]
    root = checkout_root(package_dir)
    if root is not None:
        return str(root / "instance")
    return str(user_data_folder(environ))


def template_folders(instance_path: str, overrides: str | os.PathLike | None = None,
                     package_dir: Path = PACKAGE) -> list[Path]:
    """The app's template folders, first found wins: the site's override folders
    that exist, then the package's own ``templates/``."""
    found: list[Path] = []
    if overrides:
        named = Path(overrides)
        if not named.is_dir():
            raise ValueError(f"TEMPLATE_OVERRIDES: {named} is not a folder")
        found.append(named)
    candidates = [Path(instance_path) / "templates"]
    root = checkout_root(package_dir)
    if root is not None:
        candidates.append(root / "templates")
    found += [folder for folder in candidates if folder.is_dir()]
    return found + [Path(package_dir) / "templates"]
