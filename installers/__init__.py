"""Packaging: the PyInstaller spec, per-OS installer scripts, and the frozen app's first-run logic."""
