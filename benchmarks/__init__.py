"""Benchmarks: each module is a command (`python -m benchmarks.<name> --help`); they import the
installed package (`pip install -e .`) and, where they share code, each other
(`from benchmarks import learning`), so run them from the repository root."""
