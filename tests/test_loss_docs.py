"""Each loss's docstring ends with the recipe that selects it: that recipe must load through the
recipe loader, select the loss it documents, and train a step of a tiny student beside a teacher."""

from __future__ import annotations

import inspect
import math
import textwrap

import pytest
import torch
import yaml
from conftest import STUDENT_SIZE, pixel_dataset, processor, tiny_resnet, tiny_vit

from hf_rcka.arguments import DistillationTrainingArguments
from hf_rcka.modeling.assembly import build_distillation_model
from hf_rcka.modeling.teacher_inputs import input_stats
from hf_rcka.registry import LOSSES


def documented_recipe(name: str) -> dict:
    """The YAML after the last ``Recipe::`` of the loss's docstring, which must end the docstring."""
    doc = inspect.getdoc(LOSSES.get(name)) or ""
    assert "Recipe::" in doc, f"{name}'s docstring has no Recipe:: block"
    block = doc.rsplit("Recipe::", 1)[1]
    assert block.startswith("\n\n") and all(line.startswith("    ") or not line for line in block.splitlines()), \
        f"{name}'s Recipe:: block is not the indented end of its docstring"
    return yaml.safe_load(textwrap.dedent(block))


def deit_student() -> torch.nn.Module:
    from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher

    torch.manual_seed(0)
    config = DeiTConfig(image_size=STUDENT_SIZE, patch_size=4, hidden_size=36, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=44, num_labels=3)
    return DeiTForImageClassificationWithTeacher(config)


@pytest.mark.parametrize("name", LOSSES.names())
def test_the_recipe_in_each_loss_docstring_selects_it_and_trains(name, tmp_path):
    recipe = documented_recipe(name)
    assert set(recipe) <= {"losses", "feature_pairs"}, recipe
    assert name in [spec["name"] for spec in recipe["losses"]]
    args = DistillationTrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True,
                                         per_device_train_batch_size=6, teacher_accuracy_check="off", **recipe)
    student = deit_student() if name == "deit_token" else tiny_vit()
    # the teacher at 64 px: its last stage is 2 x 2 there (1 x 1 at 16 px, too small for patch_cka)
    model = build_distillation_model(student, tiny_resnet(), args, input_stats(processor(STUDENT_SIZE)),
                                     input_stats(processor(64))).train()
    assert [type(loss) for loss in model.losses.values()].count(LOSSES.get(name)) == 1
    data = pixel_dataset(6)
    output = model(pixel_values=torch.stack([data[i]["pixel_values"] for i in range(6)]),
                   labels=torch.tensor([data[i]["labels"] for i in range(6)]))
    own = [term for term in output.loss_terms if term.startswith(name)]
    assert own and all(math.isfinite(float(output.loss_terms[term].detach())) for term in own), output.loss_terms
    output.loss.backward()
    assert student.classifier.weight.grad is not None if name != "deit_token" else \
        student.distillation_classifier.weight.grad.abs().sum() > 0
