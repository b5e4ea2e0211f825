#!/usr/bin/env python
"""Layer-by-layer linear CKA heatmaps between a reference model and one or more others.

    python scripts/cka_report.py outputs/supervised-resnet10t-digits \\
        outputs/supervised-vit_tiny-digits outputs/rcka-vit_tiny_from_resnet10t-digits \\
        --dataset_name builtin:digits --output outputs/cka_report

The first model (e.g. the teacher) gives the rows; each further model (e.g. the student alone,
then the distilled student) gets one heatmap, side by side on one colour scale, so the picture
shows which student layers moved towards which teacher layers. Models are anything the training
CLI loads (a saved folder, a Hub id, ``timm/<arch>``); each sees the images prepared its own way.
Images are the first ``--num_images`` of the validation split the training CLI would use (the
same stratified split, ``split_seed``), or of ``--validation_dir``. Writes ``cka.png`` and
``cka.md`` into ``--output``; pass ``--card`` to add the picture to a model folder's card.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from hf_rcka.analysis import layer_cka, prepare_pixels, save_heatmaps
from hf_rcka.arguments import DataArguments
from hf_rcka.data.datasets import load_raw_datasets
from hf_rcka.models.loading import load_image_classifier
from hf_rcka.models.processors import load_image_processor
from hf_rcka.data.transforms import eval_transform


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("reference", help="model whose layers are the rows (e.g. the teacher)")
    parser.add_argument("models", nargs="+", help="models compared with it, one heatmap each")
    parser.add_argument("--names", nargs="+", help="display names: reference first, then each model")
    parser.add_argument("--dataset_name", help="datasets id or builtin:digits")
    parser.add_argument("--dataset_config_name")
    parser.add_argument("--validation_dir", help="image folder, one sub-folder per class")
    parser.add_argument("--train_val_split", type=float,
                        help="as in the training recipe (default: the compared models' distill_config.yaml, else 0.15)")
    parser.add_argument("--split_seed", type=int,
                        help="as in the training recipe (default: the compared models' distill_config.yaml, else 42)")
    parser.add_argument("--image_column_name", default="image")
    parser.add_argument("--label_column_name", default="label")
    parser.add_argument("--num_images", type=int, default=512)
    parser.add_argument("--output", type=Path, default=Path("outputs/cka_report"))
    parser.add_argument("--card", type=Path, help="model folder whose README.md card gets the picture")
    args = parser.parse_args(argv)
    if (args.dataset_name is None) == (args.validation_dir is None):
        parser.error("give exactly one of --dataset_name and --validation_dir")
    if args.names and len(args.names) != 1 + len(args.models):
        parser.error(f"--names needs {1 + len(args.models)} names (reference first), got {len(args.names)}")
    if args.num_images < 3:
        parser.error("--num_images must be at least 3")
    if args.card and not (args.card / "README.md").is_file():  # found out now, not after the models ran
        parser.error(f"--card {args.card} has no README.md model card: give a model folder a run wrote")
    recorded = _recorded_split([*args.models, args.reference])
    for key in ("train_val_split", "split_seed"):
        if getattr(args, key) is None:  # the split the models were evaluated on, not images they trained on
            setattr(args, key, recorded.get(key, DataArguments.__dataclass_fields__[key].default))
    return args


def _recorded_split(folders: list[str]) -> dict:
    """``train_val_split`` and ``split_seed`` from the first run folder whose recipe records them."""
    import yaml

    for folder in folders:
        recipe = Path(folder) / "distill_config.yaml"
        if recipe.is_file():
            values = yaml.safe_load(recipe.read_text()) or {}
            return {k: values[k] for k in ("train_val_split", "split_seed") if k in values}
    return {}


def sample_images(args: argparse.Namespace) -> list:
    """The first ``num_images`` validation images, as the training CLI would split them."""
    if args.validation_dir:  # the folder is the evaluation set: a seeded shuffle of it
        import datasets

        folder = datasets.load_dataset("imagefolder", data_dir=args.validation_dir, split="train")
        validation = folder.shuffle(seed=args.split_seed)
    else:
        data_args = DataArguments(
            dataset_name=args.dataset_name, dataset_config_name=args.dataset_config_name,
            train_val_split=args.train_val_split, split_seed=args.split_seed,
            image_column_name=args.image_column_name, label_column_name=args.label_column_name,
        )
        validation = load_raw_datasets(data_args)["validation"]
    count = min(args.num_images, len(validation))
    return list(validation.select(range(count))[args.image_column_name])


def load_model(name: str):
    """A model and its inputs' transform, exactly as evaluation during training prepares them."""
    model = load_image_classifier(name)
    transform = eval_transform(load_image_processor(name, model))
    return model.eval(), transform


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = args.names or [Path(m).name or m for m in [args.reference, *args.models]]
    images = sample_images(args)
    reference, reference_transform = load_model(args.reference)
    reference_pixels = prepare_pixels(images, reference_transform)
    reports = []
    for name, path in zip(names[1:], args.models):
        model, transform = load_model(path)
        reports.append(layer_cka(reference, reference_pixels, model, prepare_pixels(images, transform), (names[0], name)))
    args.output.mkdir(parents=True, exist_ok=True)
    png = save_heatmaps(reports, args.output / "cka.png", title=f"linear CKA per layer pair, {len(images)} images")
    markdown = "\n".join(f"### {r.row_model} vs {r.column_model}\n\n{r.to_markdown()}" for r in reports)
    (args.output / "cka.md").write_text(markdown)
    print(markdown)
    print(f"heatmaps: {png}\ntables: {args.output / 'cka.md'}")
    if args.card:
        from hf_rcka.trainer.card import add_cka_to_card

        shutil.copy(png, args.card / "cka.png")
        add_cka_to_card(args.card, "cka.png", markdown)
        print(f"card: {args.card / 'README.md'} now shows cka.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
