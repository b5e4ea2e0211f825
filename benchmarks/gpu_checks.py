"""Three checks for a GPU machine, printed as lines (a few seconds; also runs on CPU at small sizes).

1. Bilinear resizing of a small, wide feature map, forward + backward: ``F.interpolate`` on the
   standard layout against ``hf_rcka.functional.resize.resize_bilinear``, with the largest
   difference between their values. patch CKA resizes maps like this one to fit whole patches.
2. ``patch_cka``'s hand-written kernel against plain autograd on the device, for maps in the
   standard layout, channels_last, channel-sliced and transposed, in bf16 and float32: values and
   the student's gradient.
3. Three pairs joined in one kernel call under bf16 autocast, the teachers as maps and as patch
   Grams, against plain autograd per pair in float32.

    python benchmarks/gpu_checks.py [cuda|cpu]    # no JSON: it prints its lines
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from step_overhead import _timed  # noqa: E402  (benchmarks/, the script's folder; it puts the repo on the path)
from hf_rcka.functional import patch as P  # noqa: E402
from hf_rcka.functional import pcka_kernel  # noqa: E402
from hf_rcka.functional.resize import resize_bilinear  # noqa: E402


def _median_ms(fn, device: torch.device, n: int = 10) -> float:
    fn()
    return sorted(_timed(fn, device) for _ in range(n))[n // 2] * 1e3


def check_resize(device: torch.device) -> None:
    shape = (8, 64, 14, 14) if device.type == "cpu" else (128, 1536, 14, 14)
    x = torch.randn(shape, device=device, requires_grad=True)
    grad = torch.randn(shape[0], shape[1], 16, 16, device=device)

    def plain():
        F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False).backward(grad)

    def ours():
        resize_bilinear(x, (16, 16)).backward(grad)

    diff = (F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False) - resize_bilinear(x, (16, 16)))
    print(f"resize {shape}->16x16 fwd+bwd: F.interpolate NCHW {_median_ms(plain, device):.2f} ms, "
          f"resize_bilinear {_median_ms(ours, device):.2f} ms, max diff {diff.abs().max().item():.2e}")


def _maps(b, c, h, layout, dtype, device):
    student, teacher = (torch.randn(b, c, h, h, device=device, dtype=dtype) for _ in range(2))
    if layout == "cl":
        student, teacher = (m.contiguous(memory_format=torch.channels_last) for m in (student, teacher))
    if layout == "slice":
        student = torch.randn(b, 2 * c, h, h, device=device, dtype=dtype)[:, ::2]
        teacher = teacher.permute(0, 1, 3, 2)
    return student, teacher


def check_patch_kernel(device: torch.device) -> None:
    torch.manual_seed(0)
    print("default backend on", device, pcka_kernel.default_backend(device))
    cases = [(8, 96, 28, 4, "nchw", torch.float32), (16, 64, 14, 4, "cl", torch.bfloat16),
             (4, 48, 7, 4, "slice", torch.bfloat16), (32, 128, 14, 2, "cl", torch.float32)]
    for b, c, h, patch, layout, dtype in cases:
        student0, teacher = _maps(b, c, h, layout, dtype, device)
        out = {}
        for backend in ("kernel", "autograd"):
            student = student0.detach().clone().requires_grad_(True)
            value = P.patch_cka(student, teacher, patch_size=patch, backend=backend)
            (value * torch.linspace(0.5, 1.5, value.numel(), device=device)).sum().backward()
            out[backend] = (value.detach().double(), student.grad.double())
        dv = (out["kernel"][0] - out["autograd"][0]).abs().max().item()
        dg = ((out["kernel"][1] - out["autograd"][1]).norm() / out["autograd"][1].norm()).item()
        ok = dv < 1e-4 and dg < 1e-3 and torch.isfinite(out["kernel"][1]).all().item()
        print(f"patch_cka kernel vs autograd {(b, c, h, h)} patch {patch} {layout} {dtype}: value diff {dv:.1e}, "
              f"grad rel diff {dg:.1e} -> {'OK' if ok else 'MISMATCH'}")


def check_joined_pairs(device: torch.device) -> None:
    """Three bf16 pairs on one 14 x 14 grid through one kernel call, under autocast, with the
    teachers as maps and reduced to their patch Grams (``patch_cka_side``), against plain autograd
    on each pair in float32: the joined call must turn autocast off on the device of a list of maps."""
    torch.manual_seed(1)
    widths = (64, 96, 32) if device.type == "cpu" else (256, 512, 768)
    b = 8 if device.type == "cpu" else 64
    students0 = [torch.randn(b, c, 14, 14, device=device, dtype=torch.bfloat16) for c in widths]
    teachers = [(0.5 * s.float() + torch.randn_like(s, dtype=torch.float32)).to(torch.bfloat16) for s in students0]
    want_values, want_grads = [], []
    for s0, t in zip(students0, teachers):
        s = s0.detach().clone().requires_grad_(True)
        value = P.patch_cka(s, t, patch_size=4, backend="autograd")
        want_grads.append(torch.autograd.grad(value.sum(), s)[0].double())
        want_values.append(value.detach().double())
    for name, given in (("maps", teachers), ("patch Grams", [P.patch_cka_side(t, 4) for t in teachers])):
        students = [s0.detach().clone().requires_grad_(True) for s0 in students0]
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            values = P.patch_cka_many(students, given, patch_size=4)
        grads = torch.autograd.grad(sum(v.sum() for v in values), students)
        dv = max((v.double() - w).abs().max().item() for v, w in zip(values, want_values))
        dg = max(((g.double() - w).norm() / w.norm()).item() for g, w in zip(grads, want_grads))
        ok = dv < 1e-4 and dg < 1e-2 and all(v.dtype == torch.float32 for v in values)
        print(f"patch_cka_many, 3 joined bf16 pairs {widths} at batch {b}, teachers as {name}, under autocast: "
              f"value diff {dv:.1e}, grad rel diff {dg:.1e} -> {'OK' if ok else 'MISMATCH'}")


def _device(text: str) -> torch.device:
    try:
        return torch.device(text)
    except RuntimeError as error:  # argparse reports ArgumentTypeError as a usage error
        raise argparse.ArgumentTypeError(str(error)) from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("device", nargs="?", default="cuda", type=_device,
                        help="where to run the checks: cuda (the default; cuda:N for another GPU) or cpu")
    device = parser.parse_args(argv).device
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_checks.py: no CUDA device here (torch.cuda.is_available() is False); "
                         "run it on a GPU machine, or give `cpu` for the small CPU checks")
    check_resize(device)
    check_patch_kernel(device)
    check_joined_pairs(device)


if __name__ == "__main__":
    main()
