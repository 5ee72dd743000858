"""The session-store benchmark of issue 5: `python3 dev.py bench` (see bench/README.md)."""
