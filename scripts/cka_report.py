#!/usr/bin/env python
"""Layer-by-layer linear CKA heatmaps between a reference model and one or more others.

    python scripts/cka_report.py outputs/supervised-resnet10t-digits \\
        outputs/supervised-vit_tiny-digits outputs/rcka-vit_tiny_from_resnet10t-digits \\
        --dataset_name builtin:digits --output outputs/cka_report

See ``hf_rcka/cli/cka_report.py`` or ``--help`` for what it compares and writes.
"""

import sys

from hf_rcka.cli.cka_report import main, parse_args  # noqa: F401 - parse_args for tests and callers

if __name__ == "__main__":
    sys.exit(main())
