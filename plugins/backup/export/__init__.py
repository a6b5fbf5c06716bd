"""The monthly guest export: the streaming query, the API, the preview, the
``export-guests`` command."""
