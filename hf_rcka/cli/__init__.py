"""The two commands. ``distill`` (``main``, the entry point): recipe parsing (``recipe``,
``coercion``, ``help``), checks before anything loads (``preflight``, with ``model_sources``,
``output_folder``, ``resume_checks``, ``teacher_data`` and ``hub_contents``), the run (``job``,
with ``run_inputs``, ``probes`` and ``final_evaluation``), the records a run leaves (``records``)
and its smoke test (``smoke``, ``smoke_data``, ``smoke_check``). ``cka_report``: layer-by-layer CKA
heatmaps of trained models against a reference."""
