"""Test helpers that tests and bench/ share: a tiny SavedModel and a server child process."""
