"""The backup commands (click): thin, over ops."""
