"""Layer-by-layer CKA between two models (hf_rcka.analysis) and the report script behind it."""

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _models import hf_deit, hf_vit, pixels, timm_model
from hf_rcka.analysis import cka_matrix, layer_cka, save_heatmaps
from hf_rcka.cli import cka_report

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def images():
    return pixels(32, batch=12)


def test_a_model_against_itself_has_ones_on_the_diagonal(images):
    vit = hf_vit()
    report = layer_cka(vit, images, vit, images, names=("vit", "vit"))
    layers = report.matrix.shape[0]
    assert report.matrix.shape == (layers, layers) == (4, 4)  # embedding + 2 blocks + logits
    assert report.row_names[-1] == "3: logits (3 classes)"
    torch.testing.assert_close(report.matrix.diagonal(), torch.ones(layers), atol=1e-4, rtol=0)
    torch.testing.assert_close(report.matrix, report.matrix.T, atol=1e-5, rtol=0)


def test_vit_tokens_against_cnn_maps_give_layers_by_layers_values_in_unit_range(images):
    deit, resnet = hf_deit(), timm_model("resnet18")
    report = layer_cka(deit, images, resnet, images, names=("deit", "resnet"))
    assert report.matrix.shape == (4, len(report.column_names)) and len(report.column_names) >= 5
    assert report.matrix.dtype == torch.float32
    assert bool(((report.matrix >= 0) & (report.matrix <= 1)).all())
    assert report.row_names[0].startswith("0: tokens 4x4x36")  # 2 prefix tokens dropped: 4x4 patch grid
    assert report.column_names[-2].split(": ")[1].startswith("map")
    assert "logits" in report.row_names[-1] and "logits" in report.column_names[-1]
    # an untrained ViT and an untrained ResNet are not the same function of the input
    assert float(report.matrix.max()) < 0.999
    table = report.to_markdown()
    assert table.count("\n") == 2 + len(report.row_names)


def test_the_logits_row_is_what_the_classifier_outputs(images):
    """A ViT's token rows hold only patch tokens (its head reads the class token): the logits row
    compares what the two models output, and equals CKA of their logits computed directly."""
    from hf_rcka.functional import linear_cka

    first, second = hf_vit(), hf_vit()
    torch.manual_seed(1)
    second.classifier.reset_parameters()  # same body, another head: logits CKA below 1
    report = layer_cka(first, images, second, images)
    with torch.no_grad():
        direct = linear_cka(first(pixel_values=images).logits, second(pixel_values=images).logits)
    torch.testing.assert_close(report.matrix[-1, -1], direct.float(), atol=1e-5, rtol=0)
    assert float(direct) < 0.99


def test_a_constant_layer_has_no_cka(images):
    """CKA of an activation that is the same for every image is 0 / 0: n/a, not a measured 0.00."""
    vit = hf_vit()
    with torch.no_grad():
        vit.classifier.weight.zero_()  # the same logits (the bias) for every image
    report = layer_cka(vit, images, vit, images, names=("a", "b"))
    assert bool(report.matrix[-1].isnan().all()) and bool(report.matrix[:, -1].isnan().all())
    assert not bool(report.matrix[:-1, :-1].isnan().any())
    last_row = report.to_markdown().splitlines()[-1]
    assert last_row.count("n/a") == report.matrix.shape[1] and "0.00" not in last_row


def test_a_nan_activation_is_an_error_not_a_constant_layers_n_a(images):
    """NaN CKA read n/a, which the table and README define as a layer that is the same for every
    image: a diverged model's broken layers passed for constant ones."""
    from hf_rcka.errors import ModelError

    vit, broken = hf_vit(), hf_vit()
    with torch.no_grad():
        broken.classifier.weight[0, 0] = float("nan")
    with pytest.raises(ModelError, match=r"model 'b': hidden state '3: logits \(3 classes\)' holds NaN or inf"):
        layer_cka(vit, images, broken, images, names=("a", "b"))


def test_differently_sized_inputs_must_be_the_same_images(images):
    vit = hf_vit()
    with pytest.raises(ValueError, match="same images"):
        layer_cka(vit, images, vit, images[:5])


def test_heatmaps_are_written(tmp_path, images):
    vit = hf_vit()
    report = layer_cka(vit, images, vit, images)
    path = save_heatmaps([report, report], tmp_path / "cka.png", title="t")
    assert path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"
    bare = save_heatmaps([report], tmp_path / "cka")  # no suffix: a PNG, as matplotlib's default
    assert bare.read_bytes()[:4] == b"\x89PNG" and sorted(p.name for p in tmp_path.iterdir()) == ["cka", "cka.png"]


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_report_script_on_saved_models(tmp_path):
    """scripts/cka_report.py on two saved folders and an image folder, through its main()."""
    first, second = tmp_path / "a", tmp_path / "b"
    from transformers import ViTImageProcessor

    for folder, seed in ((first, 0), (second, 1)):
        torch.manual_seed(seed)
        model = hf_vit()
        model.save_pretrained(folder)
        ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    rng = np.random.default_rng(0)
    for label in ("x", "y"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(tmp_path / "images" / label / f"{i}.png")
    out = tmp_path / "report"
    script = _load_script("cka_report")
    assert script.main([str(first), str(first), str(second), "--validation_dir", str(tmp_path / "images"),
                        "--num_images", "6", "--output", str(out), "--names", "A", "A again", "B"]) == 0
    assert (out / "cka.png").exists()
    tables = (out / "cka.md").read_text()
    assert "### A vs A again" in tables and "### A vs B" in tables
    first_table = tables.split("### A vs B")[0]
    rows = [row.strip(" |").split(" | ") for row in first_table.splitlines()[4:8]]
    diagonal = [row[i + 1] for i, row in enumerate(rows)]
    assert diagonal == ["1.00"] * 4


def test_cka_report_takes_the_models_validation_split_by_default(tmp_path):
    """Its own default (0.3) differed from training's (0.15): a third of its 'validation' images were trained on."""
    run = tmp_path / "run"
    run.mkdir()
    args = cka_report.parse_args([str(tmp_path / "teacher"), str(run), "--dataset_name", "builtin:digits"])
    cka_report.resolve_split(args)
    assert (args.train_val_split, args.split_seed) == (0.15, 42)  # training's defaults
    (run / "distill_config.yaml").write_text("dataset_name: builtin:digits\ntrain_val_split: 0.3\nsplit_seed: 7\n")
    args = cka_report.parse_args([str(tmp_path / "teacher"), str(run), "--dataset_name", "builtin:digits"])
    cka_report.resolve_split(args)
    assert (args.train_val_split, args.split_seed) == (0.3, 7)


def test_cka_report_takes_the_runs_dataset_configuration(tmp_path):
    """Without --dataset_config_name no run matched the data (its configuration differed), so their
    split was not taken: the default config's 15% carve with split_seed 42 held 20 of 30 images that
    runs with split_seed 7 had trained on."""
    runs = [tmp_path / "a", tmp_path / "b"]
    for run in runs:
        run.mkdir()
        (run / "distill_config.yaml").write_text("dataset_name: acme/pets\ndataset_config_name: small\n"
                                                 "train_val_split: 0.3\nsplit_seed: 7\n")
    args = cka_report.parse_args([*map(str, runs), "--dataset_name", "acme/pets"])
    cka_report.resolve_split(args)
    assert (args.dataset_config_name, args.train_val_split, args.split_seed) == ("small", 0.3, 7)
    args = cka_report.parse_args([*map(str, runs), "--dataset_name", "acme/pets", "--dataset_config_name", "large"])
    cka_report.resolve_split(args)  # given: kept, and these runs trained on other data
    assert (args.dataset_config_name, args.train_val_split, args.split_seed) == ("large", 0.15, 42)


def test_cka_report_refuses_a_dataset_config_beside_an_image_folder(tmp_path, capsys):
    """As a recipe's dataset_config_name beside train_dir: an image folder has no configuration, and
    the report read the folder with the setting ignored."""
    with pytest.raises(SystemExit):
        cka_report.parse_args([str(tmp_path / "t"), str(tmp_path / "s"), "--validation_dir", str(tmp_path),
                               "--dataset_config_name", "full"])
    assert "--dataset_config_name is read only with --dataset_name" in capsys.readouterr().err


def test_cka_report_refuses_a_card_folder_without_a_card_before_computing(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cka_report.parse_args([str(tmp_path / "t"), str(tmp_path / "s"), "--dataset_name", "builtin:digits",
                               "--card", str(tmp_path / "missing")])
    assert "has no README.md model card" in capsys.readouterr().err


def _saved_run(folder: Path, seed: int = 0, recipe: str | None = "dataset_name: builtin:digits\n") -> str:
    """A tiny ViT saved as a run folder (card and recorded recipe), for 8 px digits."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(seed)
    config = ViTConfig(image_size=8, patch_size=4, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32, num_labels=10)
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 8, "width": 8}).save_pretrained(folder)
    (folder / "README.md").write_text("# a run\n\n## Usage\n\ntext\n")
    if recipe is not None:
        (folder / "distill_config.yaml").write_text(recipe)
    return str(folder)


@pytest.mark.parametrize("problem", ["card not compared", "card not a run"])
def test_cka_report_card_must_be_a_compared_run(tmp_path, capsys, problem):
    """It added a picture of other models to any folder with a README.md (and `---{}---` to plain ones)."""
    first, second = _saved_run(tmp_path / "a"), _saved_run(tmp_path / "b", 1)
    card = _saved_run(tmp_path / "c", 2, recipe=None if problem == "card not a run" else "dataset_name: builtin:digits\n")
    models = [first, second, card] if problem == "card not a run" else [first, second]
    with pytest.raises(SystemExit):
        cka_report.parse_args([*models, "--dataset_name", "builtin:digits", "--card", card])
    assert ("is not one of the compared models" if problem == "card not compared" else "holds no distill_config.yaml") \
        in capsys.readouterr().err


def test_cka_report_refuses_a_card_whose_folder_a_training_run_holds(tmp_path, capsys):
    """A retrain of the card's folder while the report computed set the compared model aside, and
    its own card got the picture of the model it replaced (both exit 0)."""
    from hf_rcka.cli.output_folder import training_alone_in

    first, second = _saved_run(tmp_path / "a"), _saved_run(tmp_path / "b", 1)
    out, _ = tmp_path / "report", capsys.readouterr()
    with training_alone_in(second) as refusal:  # a training run in the card's folder
        assert refusal is None
        assert cka_report.main([first, second, "--dataset_name", "builtin:digits", "--num_images", "10",
                                "--output", str(out), "--card", second]) == 2
    assert capsys.readouterr().err.startswith(f"error: --card {second!r} is in use by a training run")
    assert "cka" not in (Path(second) / "README.md").read_text().lower()


def test_cka_report_refuses_a_model_whose_folder_a_training_run_replaces(tmp_path, capsys):
    """The report pictured what a retrain had left of a compared model mid-load, or failed on a
    config.json moved away."""
    from hf_rcka.cli.output_folder import training_alone_in

    first, second = _saved_run(tmp_path / "a"), _saved_run(tmp_path / "b", 1)
    out, _ = tmp_path / "report", capsys.readouterr()
    with training_alone_in(second) as refusal:  # a retrain of the compared model's folder
        assert refusal is None
        assert cka_report.main([first, second, "--dataset_name", "builtin:digits", "--num_images", "10",
                                "--output", str(out)]) == 2
    assert capsys.readouterr().err.startswith(f"error: models[0] {second!r} is in use by a training run")
    assert not out.exists()


def test_cka_report_takes_the_runs_columns_and_refuses_runs_that_differ(tmp_path, capsys):
    """The columns defaulted to image and label: runs trained on another image column were compared
    on pictures they never saw, and a carved split stratified by another label held 34 of 50
    training images."""
    first = _saved_run(tmp_path / "a", recipe="dataset_name: builtin:digits\nimage_column_name: picture\n"
                                              "label_column_name: target\n")
    args = cka_report.parse_args([first, first, "--dataset_name", "builtin:digits"])
    cka_report.resolve_split(args)
    assert (args.image_column_name, args.label_column_name) == ("picture", "target")
    args = cka_report.parse_args([first, first, "--dataset_name", "builtin:digits", "--label_column_name", "y"])
    cka_report.resolve_split(args)
    assert (args.image_column_name, args.label_column_name) == ("picture", "y")  # a flag wins
    second = _saved_run(tmp_path / "b", 1, recipe="dataset_name: builtin:digits\n")
    out, _ = tmp_path / "report", capsys.readouterr()
    assert cka_report.main([first, second, "--dataset_name", "builtin:digits", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the compared runs trained with different image_column_names") and not out.exists()


def test_cka_report_refuses_runs_that_held_out_different_images(tmp_path, capsys):
    """Only the first run's split was read: the other run had trained on most of the report's images."""
    first = _saved_run(tmp_path / "a", recipe="dataset_name: builtin:digits\nsplit_seed: 1\n")
    second = _saved_run(tmp_path / "b", 1, recipe="dataset_name: builtin:digits\nsplit_seed: 2\n")
    out, _ = tmp_path / "report", capsys.readouterr()
    assert cka_report.main([first, second, "--dataset_name", "builtin:digits", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the compared runs held out different validation images of builtin:digits")
    assert "split_seed 1" in err and "split_seed 2" in err and not out.exists()


def test_cka_report_refuses_a_split_the_compared_runs_trained_on(tmp_path, capsys):
    """A --split_seed other than the runs' carved the report's images out of their training images."""
    first, second = _saved_run(tmp_path / "a"), _saved_run(tmp_path / "b", 1)
    out, _ = tmp_path / "report", capsys.readouterr()
    assert cka_report.main([first, second, "--dataset_name", "builtin:digits", "--split_seed", "3",
                            "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: model ") and "most of this report's validation images would be that model's " \
        "training images" in err and "Pass --train_val_split 0.15 --split_seed 42 --label_column_name label as that model did" in err
    assert not out.exists()


def test_cka_report_reads_a_checkpoints_split_from_its_run(tmp_path, capsys):
    """A checkpoint-N folder holds no recipe: the check was skipped, and the report took split_seed 42's
    images, 228 of 256 of them the run's training images (its run held out split_seed 7's)."""
    run = Path(_saved_run(tmp_path / "run", recipe="dataset_name: builtin:digits\nsplit_seed: 7\n"))
    checkpoint = Path(_saved_run(run / "checkpoint-100", recipe=None))
    (checkpoint / "trainer_state.json").write_text("{}")
    args = cka_report.parse_args([str(checkpoint), _saved_run(tmp_path / "b", 1, recipe=None),
                                  "--dataset_name", "builtin:digits"])
    cka_report.resolve_split(args)
    assert args.split_seed == 7
    _ = capsys.readouterr()
    assert cka_report.main([str(checkpoint), str(tmp_path / "b"), "--dataset_name", "builtin:digits",
                            "--split_seed", "42", "--output", str(tmp_path / "r")]) == 2
    assert "most of this report's validation images would be that model's training images" in capsys.readouterr().err


def test_runs_with_other_split_settings_agree_on_a_datasets_own_validation_split(tmp_path, capsys):
    """Nothing is carved from a dataset with a validation split: the split settings do not matter there."""
    import datasets

    rng = np.random.default_rng(0)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    (tmp_path / "ds").mkdir()
    for split in ("train", "validation"):
        images = [Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)) for _ in range(6)]
        split_data = datasets.Dataset.from_dict({"image": images, "label": [0, 1] * 3}, features=features)
        split_data.to_parquet(str(tmp_path / "ds" / f"{split}.parquet"))
    data = str(tmp_path / "ds")
    first = _saved_run(tmp_path / "a", recipe=f"dataset_name: {data}\nsplit_seed: 1\n")
    second = _saved_run(tmp_path / "b", 1, recipe=f"dataset_name: {data}\nsplit_seed: 2\n")
    _ = capsys.readouterr()
    assert cka_report.main([first, second, "--dataset_name", data, "--output", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "cka.png").exists()


def test_cka_report_reads_a_validation_dir_literally(tmp_path):
    """datasets read the folder name as a glob: 'vd[x]' matched the neighbouring folder 'vdx'."""
    rng = np.random.default_rng(0)
    for name, count in (("vd[x]", 3), ("vdx", 5)):
        for label in ("a", "b"):
            (tmp_path / name / label).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(tmp_path / name / label / f"{i}.png")
    first, second = _saved_run(tmp_path / "a"), _saved_run(tmp_path / "b", 1)
    args = cka_report.parse_args([first, second, "--validation_dir", str(tmp_path / "vd[x]")])
    cka_report.check_inputs(args)
    assert len(cka_report.sample_images(args)) == 6


@pytest.mark.parametrize("link", ["symbolic", "hard"])
def test_cka_report_refuses_a_validation_dir_linking_to_a_runs_training_images(tmp_path, link):
    """Only the folders' paths were compared: a folder of the held-out images plus links to some of
    a run's training images passed, and the report took those as images it never trained on."""
    from hf_rcka.errors import DataError

    rng = np.random.default_rng(0)
    for name in ("train", "report"):
        for label in ("a", "b"):
            (tmp_path / name / label).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(tmp_path / name / label / f"{i}.png")
    trained = tmp_path / "train" / "a" / "0.png"
    (os.symlink if link == "symbolic" else os.link)(trained, tmp_path / "report" / "a" / "x.png")
    first = _saved_run(tmp_path / "a", recipe=f"train_dir: {tmp_path / 'train'}\n")
    second = _saved_run(tmp_path / "b", 1)
    args = cka_report.parse_args([first, second, "--validation_dir", str(tmp_path / "report")])
    cka_report.check_inputs(args)
    with pytest.raises(DataError, match=f"model {first!r} was trained on train_dir .*, whose images this report's "
                                        "validation_dir links to: .*(symbolic link|hard link)"):
        cka_report.sample_images(args)
    os.remove(tmp_path / "report" / "a" / "x.png")
    assert len(cka_report.sample_images(args)) == 6


def test_cka_report_output_must_be_outside_the_images_it_reads(tmp_path, capsys):
    """An --output inside --validation_dir put cka.png among the images: the next report read it as
    one more validation image, of a class 'report' (training refuses an output_dir in its data)."""
    for label in ("a", "b"):
        (tmp_path / "val" / label).mkdir(parents=True)
    with pytest.raises(SystemExit):
        cka_report.parse_args(["a", "b", "--validation_dir", str(tmp_path / "val"), "--output",
                               str(tmp_path / "val" / "report")])
    assert f"--output {tmp_path / 'val' / 'report'} is inside --validation_dir" in capsys.readouterr().err
    cka_report.parse_args(["a", "b", "--validation_dir", str(tmp_path / "val"), "--output", str(tmp_path / "report")])


def test_cka_report_output_must_be_a_folder(tmp_path, capsys):
    (tmp_path / "afile.png").write_bytes(b"x")
    with pytest.raises(SystemExit):
        cka_report.parse_args(["a", "b", "--dataset_name", "builtin:digits", "--output", str(tmp_path / "afile.png")])
    assert "is a file: give a folder" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--output", "--card"])
def test_cka_report_refuses_a_folder_it_cannot_write_before_any_model_runs(tmp_path, capsys, monkeypatch, flag):
    """A read-only --output or --card ended in an OSError traceback once every model had run."""
    import os

    locked = tmp_path / "locked"
    (locked / "run").mkdir(parents=True)
    (locked / "run" / "README.md").write_text("---\ntags:\n- hf_rcka\n---\n")
    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: access(path, mode) and not str(path).startswith(str(locked)))
    with pytest.raises(SystemExit):
        cka_report.parse_args(["a", "b", "--dataset_name", "builtin:digits",
                               flag, str(locked / "run" if flag == "--card" else locked / "report")])
    assert f"{flag} {locked}" in (err := capsys.readouterr().err) and "is not writable" in err


def test_an_uncached_timm_model_offline_is_one_error_line(tmp_path, capsys):
    """Its pretrained weights come from the Hub: offline without a cached copy it was three chained
    tracebacks, after the reference model had loaded."""
    first = _saved_run(tmp_path / "a")
    _ = capsys.readouterr()
    assert cka_report.main([first, "timm/resnet10t", "--dataset_name", "builtin:digits", "--output",
                            str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: models: 'timm/resnet10t' is not cached, and the Hub is offline")


@pytest.mark.parametrize("problem", ["missing model", "missing dataset"])
def test_cka_report_mistakes_are_one_error_line(tmp_path, capsys, problem):
    """They were tracebacks, the dataset's after the models had been checked."""
    first = _saved_run(tmp_path / "a")
    second = str(tmp_path / "nowhere") if problem == "missing model" else _saved_run(tmp_path / "b", 1)
    dataset = str(tmp_path / "no_dataset") if problem == "missing dataset" else "builtin:digits"
    assert cka_report.main([first, second, "--dataset_name", dataset, "--output", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: models: model {second!r}: no such local folder" if problem == "missing model"
                              else f"error: dataset_name {dataset!r}: cannot load the dataset")
    assert "Traceback" not in "\n".join(err)


def test_a_model_folder_without_its_image_processor_is_refused_before_the_data_loads(tmp_path, capsys, monkeypatch):
    """A run stopped before its export was whole: the report said so once the data had loaded and
    every model before it had run (the training CLI checks it first)."""
    first, second = _saved_run(tmp_path / "a"), _saved_run(tmp_path / "b", 1)
    os.remove(os.path.join(second, "preprocessor_config.json"))
    monkeypatch.setattr(cka_report, "sample_images", lambda args: pytest.fail("the data loaded"))
    _ = capsys.readouterr()
    assert cka_report.main([first, second, "--dataset_name", "builtin:digits", "--output", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: models: {second} holds no preprocessor_config.json"), err


def test_a_model_with_code_of_its_own_is_one_line_that_names_the_reports_flag(tmp_path, capsys, monkeypatch):
    """It was transformers' three lines, once the data and the models before it had loaded, saying to
    pass trust_remote_code=True, which the report had no way to."""
    import json

    first, second = _saved_run(tmp_path / "a"), _saved_run(tmp_path / "b", 1)
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    config.update(model_type="custom-vit", auto_map={"AutoModelForImageClassification": "modeling_x.XModel"})
    (tmp_path / "b" / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr(cka_report, "sample_images", lambda args: pytest.fail("the data loaded"))
    _ = capsys.readouterr()
    assert cka_report.main([first, second, "--dataset_name", "builtin:digits", "--output", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: models: {second!r} is a model of type 'custom-vit'"), err
    assert "give --trust_remote_code if you trust" in err[0]
    assert cka_report.parse_args([first, second, "--dataset_name", "builtin:digits", "--trust_remote_code"]).trust_remote_code


def test_cka_report_writes_into_the_card_folder_and_keeps_its_sections(tmp_path, capsys):
    """--output equal to --card failed with shutil.SameFileError after computing everything."""
    first, second = _saved_run(tmp_path / "a"), _saved_run(tmp_path / "b", 1)
    assert cka_report.main([first, second, "--dataset_name", "builtin:digits", "--num_images", "40",
                            "--output", second, "--card", second]) == 0
    card_path = Path(second) / "README.md"
    card_path.write_text(card_path.read_text() + "\n## Limitations\n\nOnly digits.\n")  # a user's section after it
    assert cka_report.main([first, second, "--dataset_name", "builtin:digits", "--num_images", "40",
                            "--output", second, "--card", second]) == 0
    card = card_path.read_text()
    assert "![layer CKA](cka.png)" in card and "## Usage\n\ntext" in card and "## Limitations\n\nOnly digits." in card
    assert card.count("![layer CKA](cka.png)") == 1
    assert "10 classes" in (Path(second) / "cka.md").read_text()  # the logits row and column


def test_the_cards_cka_section_says_which_images_were_compared(tmp_path, capsys):
    """The card said only which models (the picture's title: how many images), not which data: a
    reader could not tell held-out digits from another folder's images."""
    first, second = _saved_run(tmp_path / "a"), _saved_run(tmp_path / "b", 1)
    assert cka_report.main([first, second, "--dataset_name", "builtin:digits", "--num_images", "12",
                            "--output", str(tmp_path / "r"), "--card", second]) == 0
    card = (Path(second) / "README.md").read_text()
    assert ("(hf_rcka's CKA report), over 12 images of scikit-learn handwritten digits, from a stratified 15% "
            "validation split carved from train (split_seed 42") in card


def test_the_report_runs_as_a_module_of_the_installed_package(tmp_path):
    """python -m hf_rcka.cli.cka_report did nothing and exited 0: an installed package has no scripts/."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-m", "hf_rcka.cli.cka_report", "--help"], cwd=tmp_path, text=True,
                          capture_output=True, env={**os.environ, "PYTHONPATH": str(root)}, timeout=120)
    assert done.returncode == 0 and "--card" in done.stdout, done.stderr



def test_the_cka_of_tiny_activations_is_their_cka_not_the_epsilon_s():
    """A freshly initialised model's states (centred norms near 1e-11) read 0.00 where their CKA was 0.9."""
    from hf_rcka.functional import linear_cka

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(40, 30, generator=generator)
    y = x @ torch.randn(30, 20, generator=generator) + 0.5 * torch.randn(40, 20, generator=generator)
    expected = float(linear_cka(x.double(), y.double()))
    matrix = cka_matrix([x * 1e-12, x, 1 + 1e-5 * x], [y * 1e-13, torch.ones(40, 3)])
    assert matrix[:, 0].tolist() == pytest.approx([expected] * 3, abs=1e-3)  # float32 keeps 1 + 1e-5 x to ~1e-7
    assert expected > 0.5 and torch.isnan(matrix[:, 1]).all()  # a constant side has no CKA


def test_a_name_with_a_bar_stays_in_its_table_cell():
    """A model named from a folder 'base|line' ended its cell: the CKA table was no table."""
    from hf_rcka.analysis import LayerCKA

    report = LayerCKA(torch.tensor([[0.5, 0.25]]), ["0: a|b"], ["0: x", "1: y"], "base|line", "student", 4)
    header, _, row = report.to_markdown().splitlines()
    assert header == "| base\\|line \\ student | 0: x | 1: y |" and row == "| 0: a\\|b | 0.50 | 0.25 |"


def test_prepare_pixels_turns_a_photo_upright_as_training_does():
    """It converted PIL images to RGB without their EXIF orientation: a phone photo went in sideways
    where training and evaluation had it upright."""
    import io

    from hf_rcka.analysis import prepare_pixels

    stored = np.zeros((8, 16, 3), dtype=np.uint8)
    stored[:, :4] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    buffer = io.BytesIO()
    Image.fromarray(stored).save(buffer, format="JPEG", exif=exif, quality=100)

    def to_tensor(image):
        return torch.from_numpy(np.asarray(image)).permute(2, 0, 1).float()

    batch = prepare_pixels([Image.open(io.BytesIO(buffer.getvalue()))], to_tensor)
    assert batch.shape == (1, 3, 16, 8)  # upright: 16 high, 8 wide


def _two_stage_resnet(num_labels=3, num_channels=3):
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    return ResNetForImageClassification(ResNetConfig(
        num_channels=num_channels, embedding_size=8, hidden_sizes=[8, 12], depths=[1, 1], layer_type="basic",
        num_labels=num_labels))


# AN2, AN3 (analysis.py layer_activations): the activations are the eval-mode forward's, whatever mode
# the model is in, and the model's own mode is left as it was
@pytest.mark.parametrize("training", [True, False])
def test_layer_activations_are_eval_mode_values_and_keep_the_models_mode(training):
    from hf_rcka.analysis import layer_activations

    model = _two_stage_resnet()
    torch.manual_seed(1)
    x = torch.randn(6, 3, 16, 16)
    with torch.no_grad():
        expected = model.eval()(pixel_values=x).logits
    model.train(training)
    activations, _ = layer_activations(model, x, batch_size=4)
    torch.testing.assert_close(activations[-1], expected)
    assert all(m.training is training for m in model.modules())


def _recorded(folder: Path, recipe: str) -> str:
    folder.mkdir()
    (folder / "distill_config.yaml").write_text(recipe)
    return str(folder)


# CR3 (cli/cka_report.py _resolve_columns): a run that recorded no column name used the default one;
# it does not differ from a run that recorded the default by name
def test_a_run_that_recorded_no_column_name_agrees_with_one_that_recorded_the_default(tmp_path):
    from argparse import Namespace

    from hf_rcka.cli.cka_report import _resolve_columns

    a = _recorded(tmp_path / "a", "dataset_name: builtin:digits\n")
    b = _recorded(tmp_path / "b", "dataset_name: builtin:digits\nimage_column_name: image\nlabel_column_name: label\n")
    args = Namespace(dataset_name="builtin:digits", image_column_name=None, label_column_name=None)
    assert _resolve_columns(args, [a, b]) is None
    assert (args.image_column_name, args.label_column_name) == ("image", "label")


# CR6 (cli/cka_report.py _report): a later report with another --output replaces the card's picture
def _saved_runs(tmp_path, names: str) -> list[str]:
    """Run folders of tiny ViTs (seeds 0, 1, ...) with a card and a recorded recipe on the digits."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    runs = []
    for seed, name in enumerate(names):
        torch.manual_seed(seed)
        ViTForImageClassification(ViTConfig(image_size=8, patch_size=4, hidden_size=16, num_hidden_layers=1,
                                            num_attention_heads=2, intermediate_size=32, num_labels=10)
                                  ).save_pretrained(tmp_path / name)
        ViTImageProcessor(size={"height": 8, "width": 8}).save_pretrained(tmp_path / name)
        (tmp_path / name / "README.md").write_text("# a run\n\n## Usage\n\ntext\n")
        (tmp_path / name / "distill_config.yaml").write_text("dataset_name: builtin:digits\n")
        runs.append(str(tmp_path / name))
    return runs


def test_a_second_report_replaces_the_cards_picture(tmp_path):
    from hf_rcka.cli import cka_report

    a, b, c = _saved_runs(tmp_path, "abc")
    for first, output in ((a, tmp_path / "r1"), (c, tmp_path / "r2")):
        assert cka_report.main([first, b, "--dataset_name", "builtin:digits", "--num_images", "20",
                                "--output", str(output), "--card", b]) == 0
    assert (Path(b) / "cka.png").read_bytes() == (tmp_path / "r2" / "cka.png").read_bytes()
    assert (tmp_path / "r1" / "cka.png").read_bytes() != (tmp_path / "r2" / "cka.png").read_bytes()



@pytest.mark.parametrize("failing", ["the report's picture", "the card's copy"])
def test_a_full_disk_during_a_report_keeps_the_earlier_pictures_whole(tmp_path, capsys, monkeypatch, failing):
    """matplotlib wrote the report's picture, and a copy the card's, onto the files themselves: a full
    disk left a picture cut short that the card still showed (and a Hub upload published), and the
    report ended in a traceback."""
    import errno
    import shutil

    import matplotlib.figure

    from hf_rcka.cli import cka_report

    a, b = _saved_runs(tmp_path, "ab")
    command = [a, b, "--dataset_name", "builtin:digits", "--num_images", "20", "--output", str(tmp_path / "r"),
               "--card", b]
    assert cka_report.main(command) == 0
    pictures = {path: path.read_bytes() for path in (tmp_path / "r" / "cka.png", Path(b) / "cka.png")}

    def cut_short(target):
        Path(target).write_bytes(b"\x89PNG cut")
        raise OSError(errno.ENOSPC, "No space left on device (simulated)", str(target))

    if failing == "the report's picture":
        monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda self, target, **kwargs: cut_short(target))
    else:
        monkeypatch.setattr(shutil, "copyfile", lambda source, target, **kwargs: cut_short(target))
    capsys.readouterr()
    assert cka_report.main(command) == 2
    said = capsys.readouterr().err.strip().splitlines()[-1]  # after the models' loading bars
    assert said.startswith("error: the disk holding ") and "is full: a write failed" in said
    assert {path: path.read_bytes() for path in pictures} == pictures
    assert not [p.name for p in (*Path(b).iterdir(), *(tmp_path / "r").iterdir()) if p.name.startswith("_writing-")]

# AN4 (analysis.py layer_cka): CKA over fewer than 3 images is degenerate and refused (the Python API;
# the report's command line refuses --num_images under 3 itself)
def test_layer_cka_of_two_images_is_refused():
    from hf_rcka.analysis import layer_cka

    model = _two_stage_resnet().eval()
    x = torch.randn(3, 3, 16, 16)
    assert layer_cka(model, x, model, x).num_images == 3
    with pytest.raises(ValueError, match="at least 3 images, got 2"):
        layer_cka(model, x[:2], model, x[:2])


def test_cka_report_adds_to_a_card_whose_model_an_evaluation_is_reading(tmp_path, capsys):
    """--card holds the folder as an evaluation does: an evaluation of that model meanwhile is no refusal."""
    from hf_rcka.cli.output_folder import training_alone_in

    first, second = _saved_run(tmp_path / "a"), _saved_run(tmp_path / "b", 1)
    out, _ = tmp_path / "report", capsys.readouterr()
    with training_alone_in(second, evaluating=True) as refusal:  # an evaluation-only run of the card's model
        assert refusal is None
        assert cka_report.main([first, second, "--dataset_name", "builtin:digits", "--num_images", "10",
                                "--output", str(out), "--card", second]) == 0
    assert "cka" in (Path(second) / "README.md").read_text().lower()


def test_the_heatmaps_share_one_0_to_1_scale_with_the_first_layer_at_the_bottom(tmp_path, monkeypatch):
    """The panels are compared by colour: each scaled to its own range, a 0.3 read as bright as
    another panel's 0.9; the rows (the reference's layers, first at the bottom as on the y axis's
    labels) are labelled on the first panel, and a second panel of the same rows leaves them out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hf_rcka.analysis import LayerCKA

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # the figure kept, to read what was drawn
    rows, columns = ["0: a", "1: b"], ["0: x", "1: y", "2: z"]
    low = LayerCKA(torch.tensor([[0.1, 0.2, 0.3], [0.2, 0.25, 0.3]]), rows, columns, "t", "s1", 5)
    high = LayerCKA(torch.tensor([[0.5, 0.7, 0.9], [0.6, 0.8, 0.9]]), rows, columns, "t", "s2", 5)
    save_heatmaps([low, high], tmp_path / "cka.png")
    first, second = figures[0].axes[:2]
    for ax in (first, second):
        assert ax.images[0].get_clim() == (0.0, 1.0)
        assert ax.get_ylim()[0] < ax.get_ylim()[1]  # row 0 at the bottom
    assert [t.get_text() for t in first.get_yticklabels()] == rows
    assert [t.get_text() for t in second.get_yticklabels()] == ["", ""]


def test_the_rows_are_the_first_named_model(images):
    """The table's corner, the panel's title and its axes name the reference (rows) first: swapped,
    the report called the teacher's layers the student's."""
    vit, resnet = hf_vit(), timm_model("resnet18")
    report = layer_cka(vit, images, resnet, images, names=("teacher", "student"))
    assert (report.row_model, report.column_model) == ("teacher", "student")
    assert len(report.row_names) == report.matrix.shape[0] == 4 and report.matrix.shape[1] == len(report.column_names)
    assert report.to_markdown().startswith("| teacher \\ student | ")


def test_cka_report_names_its_flag_for_a_column_the_data_lacks(tmp_path, capsys):
    """The report has no recipe: its error said "set image_column_name in the recipe"."""
    first, second = _saved_run(tmp_path / "a"), _saved_run(tmp_path / "b", 1)
    out, _ = tmp_path / "report", capsys.readouterr()
    assert cka_report.main([first, second, "--dataset_name", "builtin:digits", "--image_column_name", "img",
                            "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "image_column_name='img' is not a column of the dataset" in err
    assert "--image_column_name on the command line" in err and "in the recipe" not in err and not out.exists()
