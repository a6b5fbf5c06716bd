#!/usr/bin/env python
"""python manage.py COMMAND: the commands of the guest registration app."""

from guest_registration.cli import GuestGroup

cli = GuestGroup(help=__doc__, program=__name__ == "__main__")

if __name__ == "__main__":
    cli()
