"""``guest-registration COMMAND`` and ``python -m guest_registration COMMAND``: the
same commands as ``manage.py`` in a checkout, for an installed distribution."""

from __future__ import annotations


def main() -> None:
    from flask.cli import FlaskGroup

    from guest_registration.cli import load_app

    FlaskGroup(create_app=load_app, help=__doc__)(prog_name="guest-registration")


if __name__ == "__main__":
    main()
