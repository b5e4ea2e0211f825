"""``python scripts/cka_report.py REFERENCE MODEL [MODEL ...]``: layer-by-layer linear CKA heatmaps.

    python scripts/cka_report.py outputs/supervised-resnet10t-digits \\
        outputs/supervised-vit_tiny-digits outputs/rcka-vit_tiny_from_resnet10t-digits \\
        --dataset_name builtin:digits --output outputs/cka_report

The first model (e.g. the teacher) gives the rows; each further model (e.g. the student alone,
then the distilled student) gets one heatmap, side by side on one colour scale, so the picture
shows which student layers moved towards which teacher layers. The last row and column are the
models' logits. Models are anything the training CLI loads (a saved folder, a Hub id,
``timm/<arch>``); each sees the images prepared its own way, decoded as training decodes them.
Images are ``--num_images`` drawn with ``--split_seed`` from the validation split the training CLI
would use (the same stratified split, from the run folders' ``distill_config.yaml`` unless given;
a dataset's own validation split may be sorted by class), or from ``--validation_dir``: images
none of the compared runs trained on, which is checked for runs trained on an image folder (a run
trained on a ``dataset_name`` cannot be compared by path, which the report says). Writes ``cka.png`` and ``cka.md`` into ``--output``;
``--card`` adds the picture to the card of one of the compared run folders.

Mistakes (a missing model, a card folder that is not a compared run, data the models trained on)
are one ``error:`` line (exit 2) before any model runs.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ..arguments import DataArguments
from ..errors import DataError, UserError
from ..file_writes import replacing_path, write_text
from .model_sources import check_image_processor, check_model_source, check_remote_code
from .output_folder import reading_models, said_write_errors, training_alone_in, writable_folder
from ..data.image_folders import image_folder_classes
from ..run_record import RECIPE_RECORD
from .records import recorded_recipe
from .teacher_data import Roles, check_teacher_data, held_out_by

_SPLIT_KEYS = ("train_val_split", "split_seed")
_COLUMN_KEYS = ("image_column_name", "label_column_name")
_COMPARED = Roles(model="model", short="that model", evaluated="this report", trained="that model's training images",
                  harm="where its layers match the others' by memory, not by what they learned", by_flags=True,
                  other_folder="give --validation_dir with images that model did not train on")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; argument mistakes exit 2 with the usage, as argparse does."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0].split(": ", 1)[1])
    parser.add_argument("reference", help="model whose layers are the rows (e.g. the teacher)")
    parser.add_argument("models", nargs="+", help="models compared with it, one heatmap each")
    parser.add_argument("--names", nargs="+", help="display names: reference first, then each model")
    parser.add_argument("--dataset_name", help="datasets id, a local dataset folder, or builtin:digits")
    parser.add_argument("--dataset_config_name",
                        help="the dataset's configuration (default: the compared runs' distill_config.yaml, else none)")
    parser.add_argument("--validation_dir", help="image folder, one sub-folder per class")
    parser.add_argument("--train_val_split", type=float,
                        help="as in the training recipe (default: the compared runs' distill_config.yaml, else 0.15)")
    parser.add_argument("--split_seed", type=int,
                        help="as in the training recipe (default: the compared runs' distill_config.yaml, else 42)")
    parser.add_argument("--image_column_name",
                        help="as in the training recipe (default: the compared runs' distill_config.yaml, else image)")
    parser.add_argument("--label_column_name",
                        help="as in the training recipe (default: the compared runs' distill_config.yaml, else label; "
                             "a carved validation split is stratified by it)")
    parser.add_argument("--num_images", type=int, default=512, help="at most this many (default 512)")
    parser.add_argument("--output", type=Path, default=Path("outputs/cka_report"),
                        help="folder that gets cka.png and cka.md (default outputs/cka_report)")
    parser.add_argument("--card", type=Path, help="one of the compared run folders: its README.md card gets the picture")
    parser.add_argument("--trust_remote_code", action="store_true",
                        help="load models with code of their own (as the recipe key of that name: it runs that code)")
    args = parser.parse_args(argv)
    if (args.dataset_name is None) == (args.validation_dir is None):
        parser.error("give exactly one of --dataset_name and --validation_dir")
    if args.dataset_config_name is not None and args.validation_dir is not None:  # it was ignored, unsaid
        parser.error("--dataset_config_name is read only with --dataset_name (a dataset's configuration); an image "
                     "folder (--validation_dir) has none: remove --dataset_config_name")
    if args.names and len(args.names) != 1 + len(args.models):
        parser.error(f"--names needs {1 + len(args.models)} names (reference first), got {len(args.names)}")
    if args.num_images < 3:
        parser.error("--num_images must be at least 3")
    if args.output.exists() and not args.output.is_dir():
        parser.error(f"--output {args.output} is a file: give a folder for cka.png and cka.md")
    _check_output_outside_data(parser, args)
    for flag, folder in (("--output", args.output), ("--card", args.card)):  # found now, not after the models ran
        if folder is not None and not writable_folder(folder):
            parser.error(f"{flag} {folder} is not writable: give a folder you can write to")
    if args.card:
        _check_card(parser, args.card, [args.reference, *args.models])
    return args


def _check_output_outside_data(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--output`` inside the image folder the report reads: its next run read ``cka.png`` as one
    more image, of a class named after the output folder (as training refuses an ``output_dir``
    among its data)."""
    out = args.output.expanduser().resolve()
    for flag, value in (("--validation_dir", args.validation_dir), ("--dataset_name", args.dataset_name)):
        if value and os.path.isdir(os.path.expanduser(value)) and Path(value).expanduser().resolve() in (out, *out.parents):
            parser.error(f"--output {args.output} is inside {flag} {value}: cka.png would be read as one more image "
                         "of that data by the next report. Give an --output outside it")


def _check_card(parser: argparse.ArgumentParser, card: Path, compared: list[str]) -> None:
    """The card gets a picture of the compared models: it must be one of them, and a run's card."""
    if not (card / "README.md").is_file():  # found out now, not after the models ran
        parser.error(f"--card {card} has no README.md model card: give a model folder a run wrote")
    if not (card / RECIPE_RECORD).is_file():
        parser.error(f"--card {card} holds no {RECIPE_RECORD}: it is not a folder hf_rcka's training run wrote, "
                     "whose card the picture would describe")
    if not any(os.path.isdir(m) and os.path.samefile(m, card) for m in compared):
        parser.error(f"--card {card} is not one of the compared models: the picture on its card would show "
                     "other models. Give the folder of one of them (e.g. the distilled student)")


def main(argv: list[str] | None = None) -> int:
    """Run the report; user errors print ``error: ...`` and return 2."""
    args = parse_args(argv)
    try:
        check_inputs(args)
        images = sample_images(args)
        card = said_write_errors(str(args.card)) if args.card else contextlib.nullcontext()
        # the card's folder is held as an evaluation holds it: a training run there meanwhile set the
        # compared model aside, and its own card got this picture of the model it replaced
        held = training_alone_in(str(args.card), evaluating=True) if args.card else contextlib.nullcontext()
        with held as refusal:
            if refusal:
                raise UserError(f"--card {str(args.card)!r} is in use by a training run: it holds the folder's lock. "
                                "Wait for it to end, then add the report to that run's card")
            models = {"reference": args.reference, **{f"models[{i}]": model for i, model in enumerate(args.models)}}
            with said_write_errors(str(args.output)), card, reading_models(models) as in_use:
                if in_use:  # a training run replacing a compared model: the report would picture its leftovers
                    raise UserError(in_use)
                _report(args, images)  # a full disk: one line, the earlier report kept whole
    except UserError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the report was not finished", file=sys.stderr, flush=True)
        return 130
    return 0


def check_inputs(args: argparse.Namespace) -> None:
    """What can fail cheaply fails before data and models load."""
    if importlib.util.find_spec("matplotlib") is None:
        raise UserError("the report draws its heatmaps with matplotlib, which is not installed: "
                        "pip install matplotlib (or the project's demo extra, pip install 'hf_rcka[demo]')")
    for key, model in (("reference", args.reference), *(("models", model) for model in args.models)):
        check_model_source(key, model)
        check_remote_code(key, model, args.trust_remote_code, fix="give --trust_remote_code")  # transformers' 3 lines, late
        check_image_processor(key, model)  # a folder without one failed once the models before it had run
    if args.validation_dir:
        image_folder_classes("--validation_dir", args.validation_dir)
    resolve_split(args)
    if args.column_conflict:
        raise DataError(args.column_conflict)


def resolve_split(args: argparse.Namespace) -> None:
    """Unset ``train_val_split``/``split_seed`` become the compared runs' recorded ones (the images
    they were evaluated on, none of which they trained on), else training's defaults.

    Runs that recorded different splits leave ``args.split_conflict`` (the error to raise if the
    report's validation split turns out carved: a dataset's own validation split is no run's).
    """
    folders = _run_folders(args)
    _resolve_config(args, folders)
    recorded, args.split_conflict = _recorded_split(args, folders)
    for key, value in recorded.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.column_conflict = _resolve_columns(args, folders)
    for key in (*_SPLIT_KEYS, *_COLUMN_KEYS):
        if getattr(args, key) is None:
            setattr(args, key, DataArguments.__dataclass_fields__[key].default)


def _resolve_config(args: argparse.Namespace, folders: list[str]) -> None:
    """An unset ``--dataset_config_name`` becomes the one the compared runs trained this dataset
    with (when they agree): without it no run was found to have trained on the data, so their
    recorded split was not taken, and the report's images held their training images."""
    if not args.dataset_name or args.dataset_config_name is not None:
        return
    configs = set()
    for folder in folders:
        config = (recorded_recipe(folder) or {}).get("dataset_config_name")
        if config and held_out_by(folder, _data_query(args.dataset_name, config)) is not None:
            configs.add(config)
    if len(configs) == 1:
        args.dataset_config_name = configs.pop()


def _data_query(dataset_name: str, dataset_config_name: str | None) -> SimpleNamespace:
    """The report's data as ``held_out_by`` reads a run's (no split settings of its own)."""
    return SimpleNamespace(dataset_name=dataset_name, dataset_config_name=dataset_config_name, train_dir=None,
                           validation_dir=None, train_val_split=None, split_seed=None, label_column_name=None)


def _resolve_columns(args: argparse.Namespace, folders: list[str]) -> str | None:
    """Unset column names become the ones the compared runs trained with, or the error to give when
    they differ: the image column is what the models saw, and a carved split is stratified by the
    label column, so with another one most of the report's images were training images."""
    if not args.dataset_name:
        return None
    defaults = {key: DataArguments.__dataclass_fields__[key].default for key in _COLUMN_KEYS}
    recipes = {folder: recorded_recipe(folder) or {} for folder in folders}  # each read once
    for key in _COLUMN_KEYS:
        if getattr(args, key) is not None:
            continue
        used = {folder: recipe.get(key) or defaults[key] for folder, recipe in recipes.items()}
        if len(set(used.values())) > 1:
            return (f"the compared runs trained with different {key}s ({', '.join(f'{f}: {v}' for f, v in used.items())}): "
                    f"give --{key}")
        if used:
            setattr(args, key, next(iter(used.values())))
    return None


def _run_folders(args: argparse.Namespace) -> list[str]:
    """The compared models that a run of scripts/distill.py wrote, or a checkpoint of one: they
    record their data."""
    models = dict.fromkeys([args.reference, *args.models])
    return [m for m in models if recorded_recipe(m) is not None]


def _recorded_split(args: argparse.Namespace, folders: list[str]) -> tuple[dict[str, Any], str | None]:
    """``train_val_split`` and ``split_seed`` of the runs that carved their validation split from this
    report's dataset, and the error to give when they differ: runs that held out different images
    leave no image that none of them trained on."""
    if not args.dataset_name:
        return {}, None
    data = _data_query(args.dataset_name, args.dataset_config_name)
    splits = {folder: split for folder in folders if (split := held_out_by(folder, data))}
    distinct = {tuple(split.values()) for split in splits.values()}
    if len(distinct) < 2:
        return next(iter(splits.values()), {}), None
    held_out = "; ".join(f"{folder}: train_val_split {s['train_val_split']}, split_seed {s['split_seed']}, "
                         f"label_column_name {s['label_column_name']}" for folder, s in splits.items())
    return {}, (f"the compared runs held out different validation images of {args.dataset_name} ({held_out}): "
                "each one's validation images hold others' training images. Compare runs trained on the same "
                "split, or give --validation_dir with images none of them trained on")


def sample_images(args: argparse.Namespace) -> list:
    """``num_images`` validation images, as the training CLI would split them and decode them, after
    checking that no compared run trained on them."""
    import datasets

    from .run_inputs import load_data

    if args.validation_dir:  # the folder is the evaluation set (loaded as training loads a train_dir): a seeded shuffle of it
        folder = load_data(DataArguments(train_dir=args.validation_dir), eval_only=True)
        # in memory: a large folder is memory-mapped from datasets' cache, and the shuffled indices were written there
        validation, carved = folder["validation"].shuffle(seed=args.split_seed, keep_in_memory=True), False
        data = SimpleNamespace(**{k: None for k in ("dataset_name", "dataset_config_name", "train_dir")},
                               validation_dir=args.validation_dir, train_val_split=args.train_val_split,
                               split_seed=args.split_seed, label_column_name=args.label_column_name)
    else:
        data = DataArguments(
            dataset_name=args.dataset_name, dataset_config_name=args.dataset_config_name,
            train_val_split=args.train_val_split, split_seed=args.split_seed,
            image_column_name=args.image_column_name, label_column_name=args.label_column_name,
        )
        raw = load_data(data)
        validation, carved = raw["validation"], raw.carved
    if carved and getattr(args, "split_conflict", None):
        raise DataError(args.split_conflict)
    for folder in _run_folders(args):
        check_teacher_data(folder, data, carved=carved, roles=_COMPARED)
        trained_on = (recorded_recipe(folder) or {}).get("dataset_name")
        if args.validation_dir and trained_on:
            print(f"note: {folder!r} trained on dataset_name {trained_on!r}: that --validation_dir holds none of its "
                  "training images is not checked", file=sys.stderr)
    if args.image_column_name not in validation.column_names:
        raise DataError(f"the validation split has no column {args.image_column_name!r} (it has "
                        f"{validation.column_names}): give --image_column_name")
    count = min(args.num_images, len(validation))
    if count < args.num_images:
        print(f"note: the validation split holds {count} images; the report uses all of them", file=sys.stderr)
    if count < 3:
        raise DataError(f"the validation split holds {count} images: layer CKA needs at least 3")
    if not args.validation_dir and count < len(validation):  # a split's first rows may all be of one class
        # seeded_subset's draw, and the rows after it; in memory, as there (not into a save_to_disk folder)
        validation = validation.shuffle(seed=args.split_seed, keep_in_memory=True)
    if isinstance(validation.features[args.image_column_name], datasets.Image):  # decoded as training decodes
        validation = validation.cast_column(args.image_column_name, datasets.Image(decode=False))
    column = args.image_column_name
    args.image_source = _image_source(args, data, raw.evaluated if not args.validation_dir else None, carved)
    return _readable_images((validation[i][column] for i in range(len(validation))), count)


def _image_source(args: argparse.Namespace, data: Any, split: str | None, carved: bool) -> str:
    """Where the images come from, in the words of the card's evaluation line (no local path): the
    card's CKA section said only what the picture's title says, how many."""
    from ..trainer.card_facts import describe_eval_data

    if args.validation_dir:
        return f"the local image folder `{os.path.basename(os.path.normpath(args.validation_dir))}`"
    named, _, where = describe_eval_data(data, None, split=split, carved=carved)["eval_data"].partition(": ")
    return f"{named}, from {where}"


def _readable_images(values: Any, count: int) -> list:
    """The first ``count`` images of ``values`` that decode; one that does not is left out and said,
    as training and evaluation skip it (the report stopped at the first, on the set whose accuracy
    the card gives)."""
    from ..data.images import UnreadableImage, decode_image

    images, unreadable = [], []
    for value in values:
        if len(images) == count:
            break
        try:
            images.append(decode_image(value))
        except UnreadableImage as err:
            unreadable.append(err)
    if unreadable:
        print(f"note: {len(unreadable)} unreadable image(s) left out, as training and evaluation leave them out "
              f"(the first: {unreadable[0]})", file=sys.stderr)
    if len(images) < 3:
        raise DataError(f"the validation split holds {len(images)} readable images: layer CKA needs at least 3")
    return images


def _load_model(name: str, trust_remote_code: bool = False):
    """A model and its inputs' transform, exactly as evaluation during training prepares them."""
    from ..data.transforms import eval_transform
    from ..models.loading import load_image_classifier
    from ..models.processors import load_image_processor
    from .run_inputs import model_error

    with model_error(f"model {name!r}"):
        model = load_image_classifier(name, trust_remote_code=trust_remote_code)
        transform = eval_transform(load_image_processor(name, model, trust_remote_code=trust_remote_code))
    return model.eval(), transform


def _panel_names(models: list[str]) -> list[str]:
    """Each model's folder name, or its last two path parts where folder names repeat (two runs'
    ``checkpoint-20``); a Hub id as it is."""
    short = [Path(m).name or m for m in models]
    return [str(Path(*Path(m).parts[-2:])) if short.count(name) > 1 else name for m, name in zip(models, short)]


def _report(args: argparse.Namespace, images: list) -> None:
    """Compute, draw and write the tables; then the card, when asked."""
    from ..analysis import layer_cka, prepare_pixels, save_heatmaps

    names = args.names or _panel_names([args.reference, *args.models])
    reference, reference_transform = _load_model(args.reference, args.trust_remote_code)
    reference_pixels = prepare_pixels(images, reference_transform)
    reports = []
    for name, path in zip(names[1:], args.models):
        model, transform = _load_model(path, args.trust_remote_code)
        reports.append(layer_cka(reference, reference_pixels, model, prepare_pixels(images, transform), (names[0], name)))
    args.output.mkdir(parents=True, exist_ok=True)
    png = save_heatmaps(reports, args.output / "cka.png", title=f"linear CKA per layer pair, {len(images)} images")
    markdown = "\n".join(f"### {r.row_model} vs {r.column_model}\n\n{r.to_markdown()}" for r in reports)
    write_text(args.output / "cka.md", markdown)
    print(markdown)
    print(f"heatmaps: {png}\ntables: {args.output / 'cka.md'}")
    if args.card:
        from ..trainer.card import CKA_IMAGE, add_cka_to_card

        target = args.card / CKA_IMAGE
        if not (target.exists() and os.path.samefile(png, target)):  # --output may be the card's folder
            with replacing_path(target) as temporary:  # the card shows it: never a picture cut short
                shutil.copyfile(png, temporary)
        add_cka_to_card(args.card, CKA_IMAGE, markdown, f"{len(images)} images of {args.image_source}")
        print(f"card: {args.card / 'README.md'} now shows {CKA_IMAGE}")


if __name__ == "__main__":  # python -m hf_rcka.cli.cka_report, for an installed package (no scripts/)
    sys.exit(main())
