"""What an evaluation batch reads back from the device.

On a GPU each read of a device value on the host (``int(t)``, ``bool(t)``, ``.item()``, ...) makes
the host wait until the device has caught up, and the device then idles while the host queues the
next batch's kernels. Counted here on a CPU, where the same calls are made: a read added per
evaluation batch shows as a count that grows with the number of batches.
"""
import collections
import sys
from pathlib import Path

import pytest
import torch
from conftest import pixel_dataset, processor, tiny_resnet, tiny_vit

import hf_rcka
from hf_rcka import DistillationTrainer, DistillationTrainingArguments

PACKAGE = str(Path(hf_rcka.__file__).parent)
DATA = str(Path(PACKAGE) / "data")  # the collator reads host tensors while it builds a batch: no device there
READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__")


def _reads_by_site(trainer: DistillationTrainer, monkeypatch) -> collections.Counter:
    """hf_rcka's reads of a tensor's value during one ``evaluate()``, by the file and line that made them."""
    sites: collections.Counter = collections.Counter()

    def counting(name, original):
        def read(tensor, *args, **kwargs):
            caller = sys._getframe(1)
            file = caller.f_code.co_filename
            if file.startswith(PACKAGE) and not file.startswith(DATA):
                sites[f"{Path(file).relative_to(PACKAGE)}:{caller.f_lineno}"] += 1
            return original(tensor, *args, **kwargs)
        return read

    with monkeypatch.context() as patch:
        for name in READS:
            patch.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
        trainer.evaluate()
    return sites


@pytest.mark.parametrize("losses", [
    [{"name": "ce"}, {"name": "kd"}],
    [{"name": "ce"}, {"name": "rcka", "gather": True}, {"name": "patch_cka"}],
], ids=["kd", "relational"])
def test_an_evaluation_batch_reads_the_device_once(tmp_path, monkeypatch, losses):
    """One read per batch, the model's: whether the batch holds an unreadable image's stand-in, whose
    rows it must leave out of every term. The counts that weigh each term and the teacher's accuracy
    stay on the device until the evaluation's end (the trainer read each batch's count once more)."""
    per_batch = {}
    for batches in (2, 4):
        args = DistillationTrainingArguments(
            output_dir=str(tmp_path / str(batches)), report_to="none", use_cpu=True, losses=losses,
            teacher_accuracy_check="off", per_device_eval_batch_size=4,
            feature_pairs=[{"student_layer": -1, "teacher_layer": 2, "adapter": "patch_match"}])
        trainer = DistillationTrainer(model=tiny_vit(), teacher=tiny_resnet(), args=args,
                                      eval_dataset=pixel_dataset(4 * batches), processing_class=processor(16),
                                      teacher_processor=processor(16))
        trainer.evaluate()  # the first evaluation's one-time checks
        per_batch[batches] = _reads_by_site(trainer, monkeypatch)
    grown = per_batch[4] - per_batch[2]
    assert sum(grown.values()) == 2, grown  # 2 more batches, one read each
    assert all(site.startswith("losses") for site in grown), grown
