"""Pure tensor math behind every hf_rcka loss: Grams, centering, HSIC, CKA, PCKA, Nystrom, KD terms.

Everything here sees tensors only (never models, hooks or recipes), and every function computes in
float32 or better with autocast off, whatever precision the models train in. One module per concern:

* ``numerics``: the precision rules (:func:`upcast`, autocast off).
* ``cka``: Grams, centering, HSIC, linear and RBF CKA (what RCKA and feature CKA use).
* ``gram``: linear Grams of large sides in column blocks, without whole float32 copies.
* ``patch``: patch rows of feature maps and patch-wise CKA (PCKA); ``pcka_kernel`` is its
  hand-written kernel (CPU and CUDA).
* ``resize``: bilinear resizing of feature maps (fast on CUDA for small, wide maps).
* ``nystrom``: landmark kernels for efficient kernel transfer (EKT).
* ``kd``: logit and projector terms (Hinton KD, SRD).
"""

from __future__ import annotations

from .cka import (
    GramSide, center_gram, cka_from_grams, gram_linear, gram_rbf, hsic, linear_cka, linear_cka_many, linear_cka_side, rbf_cka,
    sample_rows,
)
from .kd import hint_loss, kd_loss, srd_correlation, srd_distance
from .numerics import upcast
from .nystrom import class_sums, kernel_transfer_loss, landmark_similarity, nystrom_approximation
from .patch import PatchGramSide, patch_cka, patch_cka_many, patch_cka_side, patchify

__all__ = [
    "gram_linear",
    "gram_rbf",
    "center_gram",
    "hsic",
    "cka_from_grams",
    "linear_cka",
    "linear_cka_many",
    "linear_cka_side",
    "GramSide",
    "rbf_cka",
    "sample_rows",
    "patchify",
    "patch_cka",
    "patch_cka_many",
    "patch_cka_side",
    "PatchGramSide",
    "landmark_similarity",
    "nystrom_approximation",
    "class_sums",
    "kernel_transfer_loss",
    "kd_loss",
    "srd_distance",
    "srd_correlation",
    "hint_loss",
    "upcast",
]
