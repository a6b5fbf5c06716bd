"""Built-in plugins, loaded through entry points like any third-party plugin."""
