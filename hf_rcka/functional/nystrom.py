"""Nystrom kernel transfer (EKT, Qian et al. 2020): partial kernels against a few landmarks.

The whole-dataset Gram ``X X^T`` is approximated by ``C W^+ C^T`` with ``C = X D^T`` against m
landmarks D (here: class centres), so a loss can compare student and teacher kernels in O(B m d)
per batch instead of O(B^2 d).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .cka import gram_linear
from .numerics import DEFAULT_EPS, common_dtype, full_precision

__all__ = ["landmark_similarity", "nystrom_approximation", "class_sums", "kernel_transfer_loss"]


def _landmark_similarity(features: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
    """The Nystrom partial kernel ``C = X D^T``: (B, d) x (m, d) -> (B, m)."""
    if features.shape[-1] != landmarks.shape[-1]:
        raise ValueError(
            f"features {tuple(features.shape)} and landmarks {tuple(landmarks.shape)} differ in feature size"
        )
    return features @ landmarks.transpose(-2, -1)


@full_precision
def nystrom_approximation(features: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
    """Full-Gram approximation ``C W^+ C^T`` (n x n); for analysis and tests, not training."""
    features, landmarks = common_dtype(features, landmarks)
    c = _landmark_similarity(features, landmarks)
    w = gram_linear(landmarks)
    return c @ torch.linalg.pinv(w, hermitian=True) @ c.transpose(-2, -1)


def class_sums(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class feature sums (num_classes, d) and counts (num_classes,), for running class centres.

    Counted with ``index_add_`` rather than ``bincount``, whose CUDA kernel reads the labels' range
    back from the device (a stall at every step).
    """
    sums = torch.zeros(num_classes, features.shape[-1], dtype=features.dtype, device=features.device)
    sums.index_add_(0, labels, features)
    counts = torch.zeros(num_classes, dtype=features.dtype, device=features.device)
    counts.index_add_(0, labels, torch.ones_like(labels, dtype=features.dtype))
    return sums, counts


@full_precision
def kernel_transfer_loss(
    student_features: torch.Tensor,
    teacher_features: torch.Tensor,
    student_landmarks: torch.Tensor,
    teacher_landmarks: torch.Tensor,
    eps: float = DEFAULT_EPS,
) -> torch.Tensor:
    """EKT: match the student's and teacher's (B, m) partial kernels against their own landmarks.

    ``smooth_l1(C_s, C_t, sum) / ||C_t||_F`` as in the public EKT code. Landmarks live in each
    model's own feature space, so no projector is needed; cost is O(B m d), linear in the batch.
    """
    if student_features.shape[0] != teacher_features.shape[0]:
        raise ValueError(
            f"student features {tuple(student_features.shape)} and teacher features "
            f"{tuple(teacher_features.shape)} have different batch sizes"
        )
    if student_landmarks.shape[0] != teacher_landmarks.shape[0]:
        raise ValueError(
            f"student landmarks {tuple(student_landmarks.shape)} and teacher landmarks "
            f"{tuple(teacher_landmarks.shape)} differ in count"
        )
    c_s = _landmark_similarity(*common_dtype(student_features, student_landmarks))
    c_t = _landmark_similarity(*common_dtype(teacher_features, teacher_landmarks))
    norm = torch.sqrt(c_t.pow(2).sum() + eps * eps)
    return F.smooth_l1_loss(c_s, c_t, reduction="sum") / norm


@full_precision
def landmark_similarity(features: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
    """The Nystrom partial kernel ``C = X D^T``: (B, d) x (m, d) -> (B, m), in float32 or better."""
    return _landmark_similarity(*common_dtype(features, landmarks))
