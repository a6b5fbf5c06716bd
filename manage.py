#!/usr/bin/env python
"""python manage.py COMMAND: the commands of the guest registration app."""

from flask.cli import FlaskGroup

from guest_registration.cli import load_app

cli = FlaskGroup(create_app=load_app, help=__doc__)

if __name__ == "__main__":
    cli()
