"""The ``distill`` command: recipe parsing (``recipe``, ``coercion``), checks before anything loads
(``preflight``, with ``model_sources``, ``output_folder`` and ``resume_checks``), the run (``job``),
its smoke test (``smoke``) and the entry point (``main``)."""
