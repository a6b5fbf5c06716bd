"""Writing and reading archives: the ZIP, its manifest, signing, age encryption
and verification. Neither Flask nor the host is imported here."""
