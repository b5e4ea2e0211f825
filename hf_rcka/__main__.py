"""``python -m hf_rcka RECIPE.yaml [--key value ...]`` (or ``accelerate launch -m hf_rcka ...``):
the command line of ``scripts/distill.py``, for an install without the repository's scripts."""

from hf_rcka.cli.main import console_main

if __name__ == "__main__":
    console_main()
