#!/usr/bin/env python
"""Distil (or train) an image classifier from a recipe.

    accelerate launch scripts/distill.py recipes/deit_from_regnet.yaml [--key value ...]

Flags override the recipe's keys; see README.md for the recipe format.
"""

from hf_rcka.cli.main import console_main

if __name__ == "__main__":
    console_main()
