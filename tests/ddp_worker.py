"""Worker for test_multiprocess.py: a short 2-process CPU (gloo) distillation run.

Each rank writes its student, adapters, loss state and weight average to OUT/rank{r}.safetensors
so the test can check that data parallelism kept them identical, and the images of its first
epoch (repeated augmentation, 2 copies) to OUT/rank{r}.json. Launched by torchrun, not collected
by pytest.
"""

import json
import os
import signal
import sys
from unittest import mock

sys.path.insert(0, os.path.dirname(__file__))

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from conftest import IMAGENET_MEAN, IMAGENET_STD, pixel_dataset, processor, tiny_resnet, tiny_vit  # noqa: E402
from hf_rcka import DistillationTrainer, DistillationTrainingArguments  # noqa: E402
from hf_rcka.distributed import close_process_group  # noqa: E402
from hf_rcka.augmentation import AugmentationArguments  # noqa: E402
from hf_rcka import distributed  # noqa: E402
from hf_rcka.distributed import world_size  # noqa: E402
from hf_rcka.trainer.interrupt import GracefulStop  # noqa: E402


def main(out: str) -> None:
    args = DistillationTrainingArguments(
        output_dir=os.path.join(out, "run"), max_steps=3, per_device_train_batch_size=5, learning_rate=1e-2,
        report_to="none", use_cpu=True, seed=0, save_strategy="no", logging_steps=1,
        teacher_accuracy_check="off", ddp_backend="gloo", model_ema=True, model_ema_decay=0.5,
        losses=[
            {"name": "ce"},
            {"name": "rcka", "gather": True},
            {"name": "feature_cka", "gather": True},
            {"name": "fitnet"},
            {"name": "srd"},
            {"name": "kernel_transfer", "weight": 0.04},
        ],
        feature_pairs=[{"student_layer": -1, "teacher_layer": -2, "adapter": "patch_match"}],
    )
    dataset = pixel_dataset(40, seed=0)
    trainer = DistillationTrainer(
        model=tiny_vit(), teacher=tiny_resnet(), args=args, train_dataset=dataset, eval_dataset=pixel_dataset(16, seed=1),
        processing_class=processor(16), teacher_processor=processor(24, IMAGENET_MEAN, IMAGENET_STD),
        augmentation=AugmentationArguments(aug_repeats=2, mixup=0.8),
    )
    draw = torch.rand(1).item()  # the main process's random state, which draws the augmentation
    index = {float(dataset[i]["pixel_values"][0, 0, 0]): i for i in range(len(dataset))}
    ids = [index[float(v)] for batch in trainer.get_train_dataloader() for v in batch["pixel_values"][:, 0, 0, 0]]
    model = trainer.model
    initial = {f"adapters.{k}": v.clone() for k, v in model.adapters.state_dict().items()}
    trainer.train()
    trainer.evaluate()  # shares rank 0's BatchNorm statistics of the losses (srd's projector) first
    rank = torch.distributed.get_rank()
    state = {f"student.{k}": v for k, v in model.student.state_dict().items()}
    state.update({f"adapters.{k}": v for k, v in model.adapters.state_dict().items()})
    state.update({f"losses.{k}": v for k, v in model.losses.state_dict().items()})
    state.update({f"initial.{k}": v for k, v in initial.items()})
    state.update({f"ema.{k}": v for k, v in trainer.model_ema.module.state_dict().items()})
    save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(out, f"rank{rank}.safetensors"))
    # a BatchNorm student: after its steps each rank holds its own running statistics; the
    # evaluation must use rank 0's, the ones the export holds
    bn_args = DistillationTrainingArguments(
        output_dir=os.path.join(out, "bn"), max_steps=2, per_device_train_batch_size=5, lr_base=1e-2, lr_base_size=20,
        report_to="none", use_cpu=True, seed=0, save_strategy="no", ddp_backend="gloo",
        teacher_accuracy_check="off", losses=[{"name": "ce"}],
    )
    bn = DistillationTrainer(model=tiny_resnet(), args=bn_args, train_dataset=dataset,
                             eval_dataset=pixel_dataset(16, seed=1), processing_class=processor(16))
    # the plain shuffled sampler (no repeated augmentation, data_seed unset): this rank's share of an epoch
    shuffled = [index[float(v)] for batch in bn.get_train_dataloader() for v in batch["pixel_values"][:, 0, 0, 0]]
    bn.evaluate()  # a baseline first: this evaluation must not keep training from wrapping the model in DDP
    bn.train()
    bn.evaluate()
    bn_state = {k: v for k, v in bn.distillation_model.student.state_dict().items() if not k.endswith("num_batches_tracked")}
    save_file({k: v.contiguous() for k, v in bn_state.items()}, os.path.join(out, f"rank{rank}_bn.safetensors"))
    with open(os.path.join(out, f"rank{rank}.json"), "w") as handle:
        json.dump({"world_size": world_size(), "log_history": trainer.state.log_history, "ids": ids,
                   "bn_learning_rate": bn_args.learning_rate, "draw": draw, "shuffled_ids": shuffled,
                   "bn_log_history": bn.state.log_history,
                   **padded_evaluation(out), **teacher_check_on_a_small_set(out), **stop_on_one_rank(out)}, handle)


def padded_evaluation(out: str) -> dict:
    """10 evaluation images in batches of 4 on 2 processes: the last round holds images 8-9 and
    6 repeats that even it out. Returns the evaluation's metrics and the same losses computed
    here, batch by batch ([0:4], [4:8], [8:10], as one process runs them), without the repeats."""
    args = DistillationTrainingArguments(
        output_dir=os.path.join(out, "padded"), per_device_eval_batch_size=4, report_to="none", use_cpu=True,
        ddp_backend="gloo", teacher_accuracy_check="off",
        losses=[{"name": "ce"}, {"name": "kd"}, {"name": "rcka"}, {"name": "feature_cka"}],
    )
    data = pixel_dataset(10, seed=1)
    trainer = DistillationTrainer(model=tiny_vit(), teacher=tiny_resnet(), args=args, eval_dataset=data,
                                  processing_class=processor(16), teacher_processor=processor(24))
    metrics = trainer.evaluate()
    model = trainer.distillation_model.eval()
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    relational = {"rcka_intra", "feature_cka"}  # constants over fewer than 3 samples: left out there
    with torch.no_grad():
        for start, stop in ((0, 4), (4, 8), (8, 10)):
            rows = [data[i] for i in range(start, stop)]
            output = model(pixel_values=torch.stack([r["pixel_values"] for r in rows]),
                           labels=torch.tensor([r["labels"] for r in rows]))
            for name, value in output.loss_terms.items():
                if name in relational and stop - start < 3:
                    continue
                sums[name] = sums.get(name, 0.0) + float(value) * (stop - start)
                counts[name] = counts.get(name, 0) + stop - start
    # the same images as a stream: accelerate's dispatcher splits its batches, the count is everyone's
    stream = trainer.evaluate(data.to_iterable_dataset(), metric_key_prefix="stream")
    return {"padded_metrics": metrics, "one_process_terms": {name: sums[name] / counts[name] for name in sums},
            "stream_metrics": stream}


class _SignalOnRank1(TrainerCallback):
    """A signal that reached rank 1 alone, during step 2 (set before the stop reads it)."""

    def __init__(self, stop: GracefulStop) -> None:
        self.stop = stop

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 2 and torch.distributed.get_rank() == 1:
            self.stop.signum = signal.SIGTERM


def stop_on_one_rank(out: str) -> dict:
    """Both ranks stop after the step in which one of them got the signal (the other waited forever)."""
    args = DistillationTrainingArguments(
        output_dir=os.path.join(out, "stopped"), max_steps=5, per_device_train_batch_size=5, report_to="none",
        use_cpu=True, ddp_backend="gloo", save_strategy="no", teacher_accuracy_check="off", losses=[{"name": "ce"}],
    )
    stop = GracefulStop()
    trainer = DistillationTrainer(model=tiny_resnet(), args=args, train_dataset=pixel_dataset(40, seed=0),
                                  processing_class=processor(16), callbacks=[_SignalOnRank1(stop), stop])
    # the flag goes through a gloo group of its own, as it does beside a GPU's default (nccl) group
    with mock.patch.object(distributed, "_default_backend", return_value="nccl"):
        trainer.train()
        own_group = distributed.host_group() is not torch.distributed.group.WORLD
    return {"stopped_at": stop.stopped_at, "stop_signum": stop.signum, "stopped_step": trainer.state.global_step,
            "host_group_of_its_own": own_group, "stopped_log_history": trainer.state.log_history}


def teacher_check_on_a_small_set(out: str) -> dict:
    """5 evaluation images in batches of 8 on 2 processes: the first batches are also the last,
    filled with repeats of the first images. Returns the check's accuracy and the teacher's on the
    5 images, each counted once."""
    args = DistillationTrainingArguments(
        output_dir=os.path.join(out, "small"), per_device_eval_batch_size=8, report_to="none", use_cpu=True,
        ddp_backend="gloo", teacher_accuracy_check="warn", losses=[{"name": "ce"}, {"name": "kd"}],
    )
    import datasets

    images = pixel_dataset(5, seed=3)
    pixels = torch.stack([images[i]["pixel_values"] for i in range(5)])
    teacher = tiny_resnet()
    model_inputs = DistillationTrainer(model=tiny_vit(), teacher=teacher, args=args, processing_class=processor(16),
                                       teacher_processor=processor(24)).distillation_model
    with torch.no_grad():
        predicted = model_inputs.teacher(pixel_values=model_inputs.teacher_pixels(pixels)).logits.argmax(-1)
    # the teacher is right on the first image only, which the repeats count 4 times of 16 (1 of 5 here)
    labels = [int(predicted[0])] + [(int(p) + 1) % teacher.config.num_labels for p in predicted[1:]]
    data = datasets.Dataset.from_dict({"pixel_values": pixels.numpy(), "labels": labels}).with_format("torch")
    trainer = DistillationTrainer(model=tiny_vit(), teacher=teacher, args=args, eval_dataset=data,
                                  processing_class=processor(16), teacher_processor=processor(24))
    checked = trainer.check_teacher()
    direct = trainer.distillation_model.teacher_accuracy(pixels, torch.tensor(labels))
    trainer.evaluate()
    return {"teacher_check": checked, "teacher_direct": direct, "card_teacher": trainer.card_facts.teacher_accuracy}


if __name__ == "__main__":
    main(sys.argv[1])
    close_process_group()  # not destroy_process_group(): see its docstring
