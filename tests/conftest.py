"""Shared fixtures: offline mode, tiny HF models and a tiny image-classification dataset.

Dimensions are distinct on purpose (batch 5, 17 tokens, width 36, 3 classes) so a transposed or
mis-broadcast tensor fails loudly instead of passing by coincidence.
"""

import logging
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One intra-op thread, here and in the runs the tests start: the models are tiny, and OpenMP threads
# spin-wait on each other when the cores are busy (a test file took 2.7x as long with 2 threads as with
# 1 on this 2-core machine beside other work); full-size models get every core (``slow`` below).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import datasets  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

NUM_LABELS = 3
STUDENT_SIZE = 16
TEACHER_SIZE = 24


def tiny_vit(num_labels: int = NUM_LABELS, seed: int = 0):
    """ViT at 16 px with 4 px patches: 16 patch tokens + CLS = 17 tokens of width 36."""
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=STUDENT_SIZE, patch_size=4, hidden_size=36, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=44, num_labels=num_labels, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    return ViTForImageClassification(config)


def tiny_resnet(num_labels: int = NUM_LABELS, seed: int = 1):
    """A 4-stage basic-block ResNet with widths 8/12/16/20."""
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(seed)
    config = ResNetConfig(
        num_channels=3, embedding_size=8, hidden_sizes=[8, 12, 16, 20], depths=[1, 1, 1, 1],
        layer_type="basic", num_labels=num_labels,
    )
    return ResNetForImageClassification(config)


def processor(size: int, mean: float | list[float] = 0.5, std: float | list[float] = 0.5):
    from transformers import ViTImageProcessor

    mean = [mean] * 3 if isinstance(mean, float) else mean
    std = [std] * 3 if isinstance(std, float) else std
    return ViTImageProcessor(size={"height": size, "width": size}, image_mean=mean, image_std=std)


IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def pixel_dataset(n: int = 20, size: int = STUDENT_SIZE, num_labels: int = NUM_LABELS, seed: int = 0):
    """Normalised pixel tensors whose class shifts the mean, so a model can learn something."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_labels, size=n)
    pixels = rng.normal(size=(n, 3, size, size)).astype(np.float32) * 0.5
    pixels += labels[:, None, None, None].astype(np.float32) * 0.7 - 0.7
    # a fixed-shape array feature: read as one tensor per image, where nested lists are made into
    # one tensor per pixel row (datasets' torch formatter; a quarter of a tiny model's step)
    features = datasets.Features({"pixel_values": datasets.Array3D(shape=pixels.shape[1:], dtype="float32"),
                                  "labels": datasets.Value("int64")})
    ds = datasets.Dataset.from_dict({"pixel_values": pixels, "labels": labels.tolist()}, features=features)
    return ds.with_format("torch")


@pytest.fixture(autouse=True)
def every_core_for_full_size_models(request):
    """A ``slow`` test runs a full-size model (a RegNetY-16GF teacher at 224 px), which every core
    speeds up; the tiny models of the rest gain nothing from a second thread. Under ``pytest -n``
    each worker takes its share of the cores (threads beyond them spin-wait on each other)."""
    if request.node.get_closest_marker("slow") is None:
        yield
        return
    before = torch.get_num_threads()
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    yield
    torch.set_num_threads(before)


@pytest.fixture
def train_data():
    return pixel_dataset(20, seed=0)


@pytest.fixture
def eval_data():
    return pixel_dataset(10, seed=1)


@pytest.fixture(autouse=True)
def root_logging_restored():
    """The command line configures the root logger (``basicConfig(force=True)``) with a handler on
    the ``sys.stderr`` of that moment, which is a test's captured stream: a later test that logs
    (and asserts on what is printed) wrote to a closed stream, a "Logging error" traceback."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
