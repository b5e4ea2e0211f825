"""The model the Trainer trains: student + frozen teacher + adapters, and how the teacher runs.

:mod:`hf_rcka.models` loads each classifier on its own (names, configs, labels, processors); this
package wraps a loaded student and teacher into the one module the Trainer trains:

* ``teacher_inputs``: the teacher's own normalisation and resolution, applied to the student's batch;
* ``teacher_runtime``: the frozen teacher run as cheaply as its outputs allow;
* ``distilled_heads``: both heads of a timm distilled DeiT student, read where timm computes them;
* ``feature_adapters``: one adapter per feature pair, sized from the probed hidden states;
* ``sharded_state``: full state dicts loaded into parameters FSDP2 may have sharded;
* ``distillation_model``: ``DistillationModel``, student + teacher + adapters + losses;
* ``parallel``: what data parallelism synchronises (and skips) in that wrapper;
* ``assembly``: a ``DistillationModel`` built from training arguments (losses, pairs, defaults).
"""

from ..features.pairing import FeaturePair
from .distillation_model import DISTILLATION_STATE_NAME, DistillationModel

__all__ = ["DISTILLATION_STATE_NAME", "DistillationModel", "FeaturePair"]
