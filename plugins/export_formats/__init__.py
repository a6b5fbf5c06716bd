"""Built-in export formats (CSV, JSON), one plugin module each."""
