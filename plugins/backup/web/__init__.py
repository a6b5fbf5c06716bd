"""The Backup admin page (Flask-Admin view and its templates): thin, over ops."""
