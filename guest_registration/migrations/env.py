"""Alembic's environment for every branch (the host's and each plugin's).

Three ways in:
- ``guest-registration db …`` (Flask-Migrate): the app's engine and metadata;
- an operation that passes a connection (``config.attributes["connection"]``):
  upgrades a restored or scratch database, no Flask needed;
- offline (``--sql``): SQL text for ``sqlalchemy.url``'s dialect, without BEGIN/
  COMMIT when ``config.attributes["no_transaction"]`` (a restore appends it to the
  dump inside psql's own transaction).
"""

from __future__ import annotations

from alembic import context

config = context.config


def _metadata():
    """The models' metadata when an app is around (autogenerate needs it)."""
    try:
        from flask import current_app

        return current_app.extensions["migrate"].db.metadata
    except Exception:
        return None


def _include_object(obj, name, type_, reflected, compare_to) -> bool:
    """Autogenerate compares the models' tables; a table in the database that no
    model describes belongs to a plugin branch (loaded or not) and is left out."""
    if type_ == "table" and reflected and compare_to is None:
        return False
    return True


def _options() -> dict:
    return {"target_metadata": _metadata(), "render_as_batch": True, "compare_type": True,
            "include_object": _include_object}


def run_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True,
                      dialect_opts={"paramstyle": "named"},
                      transactional_ddl=not config.attributes.get("no_transaction"),
                      **_options())
    with context.begin_transaction():
        context.run_migrations()


def _run(connection) -> None:
    context.configure(connection=connection, **_options())
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    from flask import current_app

    with current_app.extensions["migrate"].db.engine.connect() as connection:
        _run(connection)
        connection.commit()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
