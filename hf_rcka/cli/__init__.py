"""The ``distill`` command: recipe parsing, checks before anything loads, the run, the smoke test."""
