"""``guest-registration COMMAND`` and ``python -m guest_registration COMMAND``: the
same commands as ``manage.py`` in a checkout, for an installed distribution."""

from __future__ import annotations


def main() -> None:
    from guest_registration.cli import GuestGroup

    GuestGroup(help=__doc__, program=True)(prog_name="guest-registration")


if __name__ == "__main__":
    main()
