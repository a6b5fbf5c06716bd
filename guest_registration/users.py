"""Users and roles: Flask-Security's models (``fsqla_v3``), also reachable as
``guest_registration.models.User`` / ``Role``.

Apart from :mod:`.models` because importing Flask-Security's mixins imports all of
Flask-Security (its views, forms, Babel): the web app's factory imports this module
(the user datastore), commands that touch no user never do.
"""

from __future__ import annotations

from flask_security.models import fsqla_v3 as fsqla

from .extensions import db

fsqla.FsModels.set_db_info(db)


class Role(db.Model, fsqla.FsRoleMixin):
    __tablename__ = "role"

    def __str__(self) -> str:
        return self.name


class User(db.Model, fsqla.FsUserMixin):
    __tablename__ = "user"

    def __str__(self) -> str:
        return self.email
