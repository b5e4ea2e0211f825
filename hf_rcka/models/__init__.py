"""Image classifiers from Hub names, folders, timm names and configs; their labels and processors.

This package loads and checks the models a run is given, each a plain classifier on its own.
:mod:`hf_rcka.modeling` holds what is trained from them: the ``DistillationModel`` wrapper
(student, frozen teacher, adapters and losses) and how the teacher runs inside it.

One concern per module, each importing only those listed before it:

* ``sources``: what a recipe's model name refers to (``config:``, ``timm/``, Hub id or folder);
* ``image_sizes``: ``image_size`` values, and the output size an image processor fixes;
* ``label_maps``: ``num_labels`` / ``id2label`` / ``label2id`` resolved into one consistent pair;
* ``hf_config``: transformers configs read, defaulted by model type, overridden and checked;
* ``timm_models``: timm models in transformers' wrapper, with timm's init and data config;
* ``processors``: the image processor matching a model, resized to the run's resolution;
* ``token_init``: class, distillation and position tokens that transformers leaves at zero, drawn;
* ``loading``: ``load_image_classifier``, the entry point that builds or loads any of them;
* ``label_forms``: class names that differ only in Unicode normalisation, refused;
* ``labels``: class names matched between the dataset, the student and the teacher.
"""
