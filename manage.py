#!/usr/bin/env python
"""``python manage.py COMMAND``: the Flask CLI for this app (see ``--help``)."""

from flask.cli import FlaskGroup

from guest_registration import create_app

cli = FlaskGroup(create_app=create_app, help=__doc__)

if __name__ == "__main__":
    cli()
