"""The one compiled part: guest_formats._copyjson, the JSON export's render in C
(plugins/export_formats/_copyjson.c). Optional: without a C compiler and Python's
headers the install goes on and the JSON export renders in Python, the same bytes
more slowly. Everything else is in setup.cfg."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("guest_formats._copyjson", ["plugins/export_formats/_copyjson.c"],
                             optional=True)])
