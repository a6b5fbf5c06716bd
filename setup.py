"""The one compiled part: guest_formats._copyrender, the CSV and JSON exports'
whole-chunk render in C (plugins/export_formats/_copyrender.c). Optional: without a
C compiler and Python's headers the install goes on and the exports render in
Python, the same bytes more slowly. Everything else is in setup.cfg."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("guest_formats._copyrender",
                             ["plugins/export_formats/_copyrender.c"], optional=True)])
