"""The ``distill`` command: recipe parsing (``recipe``, ``coercion``), checks before anything loads
(``preflight``), the run (``job``), its smoke test (``smoke``) and the entry point (``main``)."""
