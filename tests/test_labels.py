"""Labels matched by name: permuted teachers are realigned, other names are errors, data follows names."""

import copy
import logging
import unicodedata

import datasets
import numpy as np
import pytest
import torch

from conftest import IMAGENET_MEAN, IMAGENET_STD, processor, tiny_resnet, tiny_vit
from hf_rcka.data.datasets import with_transforms
from hf_rcka.errors import DataError, LabelError
from hf_rcka.models.labels import (
    BY_NAME, align_teacher_classes, check_split_classes, check_validation_labels, resume_label_order, run_label_order,
    teacher_label_order,
)
from hf_rcka import LOSSES
from hf_rcka.modeling.distillation_model import DistillationModel
from hf_rcka.modeling.teacher_inputs import input_stats

NAMES = ["cat", "dog", "eel"]


def named(model, names):
    model.config.id2label = dict(enumerate(names))
    model.config.label2id = {n: i for i, n in enumerate(names)}
    return model


def saved_in_another_order(teacher, order):
    """The same teacher as if trained with label order ``[names[i] for i in order]``: head rows permuted."""
    other = copy.deepcopy(teacher)
    head = other.classifier[-1]
    with torch.no_grad():
        head.weight.copy_(head.weight[order])
        head.bias.copy_(head.bias[order])
    names = [teacher.config.id2label[i] for i in order]
    return named(other, names)


def test_teacher_order_by_name():
    assert teacher_label_order(NAMES, NAMES) is None
    assert teacher_label_order(NAMES, ["dog", "eel", "cat"]) == [2, 0, 1]
    assert teacher_label_order(NAMES, ["dog", "eel", "cat"], "by_index") is None


def test_teacher_with_other_names_is_an_error_listing_them():
    with pytest.raises(LabelError, match=r"dataset has \['eel'\].*teacher has \['fox'\].*by_index"):
        teacher_label_order(NAMES, ["cat", "dog", "fox"])
    with pytest.raises(LabelError, match="teacher has 4 classes|teacher has \\['ant'\\]"):
        teacher_label_order(NAMES, ["cat", "dog", "eel", "ant"], "by_index")


def test_generic_teacher_names_are_counted_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="hf_rcka.models.labels"):
        assert teacher_label_order(NAMES, ["LABEL_0", "LABEL_1", "LABEL_2"]) is None
    assert "unnamed" in caplog.text
    with pytest.raises(LabelError):
        teacher_label_order(NAMES, ["LABEL_0", "LABEL_1"])


def losses_with(teacher, student, pixels, labels):
    losses = [LOSSES.build("ce"), LOSSES.build("rcka", intra_weight=1.0, inter_weight=1.0), LOSSES.build("kd")]
    model = DistillationModel(student, teacher, losses, student_input=input_stats(processor(16)),
                              teacher_input=input_stats(processor(24, IMAGENET_MEAN, IMAGENET_STD)))
    model.train()
    return {k: float(v.detach()) for k, v in model(pixels, labels).loss_terms.items()}


def test_realigned_teacher_gives_the_same_losses_as_a_correctly_ordered_one():
    torch.manual_seed(0)
    pixels, labels = torch.randn(5, 3, 16, 16), torch.tensor([0, 1, 2, 1, 0])
    teacher = named(tiny_resnet().eval(), NAMES)
    permuted = saved_in_another_order(teacher, [1, 2, 0])  # names: dog, eel, cat
    reference = losses_with(teacher, tiny_vit(), pixels, labels)
    unaligned = losses_with(permuted, tiny_vit(), pixels, labels)
    assert unaligned["kd"] != pytest.approx(reference["kd"], rel=1e-4), "the test must see a misaligned teacher"

    align_teacher_classes(permuted, NAMES, BY_NAME, reads_logits=True, args=None)
    assert permuted.config.id2label == dict(enumerate(NAMES))
    realigned = losses_with(permuted, tiny_vit(), pixels, labels)
    assert realigned == pytest.approx(reference, rel=1e-5, abs=1e-6)
    with torch.no_grad():
        assert torch.allclose(permuted(pixel_values=pixels).logits, teacher(pixel_values=pixels).logits, atol=1e-6)


def test_student_order_wins_when_it_names_the_same_classes():
    assert run_label_order(NAMES, ["dog", "eel", "cat"], training=True) == ["dog", "eel", "cat"]
    assert run_label_order(NAMES, None, training=True) == NAMES
    assert run_label_order(NAMES, ["a", "b"], training=True) == NAMES  # new head for the new classes
    # a head of the same class count is kept: the shared classes keep their rows by name, the new
    # class takes the row of the one the data lacks (in the data's order "cat" and "dog" moved rows)
    assert run_label_order(["cat", "dog", "zebra"], ["dog", "ant", "cat"], training=True) == ["dog", "zebra", "cat"]
    assert run_label_order(["x", "y"], ["a", "b"], training=True) == ["x", "y"]
    # a name the student repeats (ImageNet's id2label has some) is no row of its own: every class gets one
    assert run_label_order(["a", "b", "c"], ["a", "a", "d"], training=True) == ["a", "b", "c"]
    assert sorted(run_label_order(["a", "b", "c"], ["d", "a", "a"], training=True)) == ["a", "b", "c"]
    with pytest.raises(LabelError, match=r"cannot evaluate.*dataset has \['cat', 'dog', 'eel'\]"):
        run_label_order(NAMES, ["a", "b", "c"], training=False)
    # a data problem like any other to a caller that catches them all (the command line's evaluation
    # of a trained model adds where the model is saved; a sweep skipping a bad dataset)
    with pytest.raises(DataError, match="cannot evaluate"):
        run_label_order(NAMES, ["a", "b", "c"], training=False)


def test_a_student_s_classes_spelt_in_another_case_keep_their_rows(caplog):
    """Data 'Dog', 'Cat' fine-tuning a student of 'cat', 'dog': no name matched exactly, so the rows
    were handed out in the data's order, the cat row trained as Dog and the dog row as Cat."""
    with caplog.at_level(logging.WARNING, logger="hf_rcka"):
        assert run_label_order(["Dog", "Cat"], ["cat", "dog"], training=True) == ["Cat", "Dog"]
    assert "'cat' -> 'Cat', 'dog' -> 'Dog'" in caplog.text
    # a new class still takes the row of one the data lacks; a name the data also has exactly is not respelt
    assert run_label_order(["Dog", "eel", "cat"], ["cat", "dog", "ant"], training=True) == ["cat", "Dog", "eel"]
    assert run_label_order(["cat", "Cat"], ["cat", "dog"], training=True) == ["cat", "Cat"]


def test_data_labels_follow_the_model_label2id_by_name():
    """Eval-only: a model whose id2label is [dog, cat, eel] on data whose ClassLabel is [cat, dog, eel]."""
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=NAMES)})
    images = [np.full((4, 4, 3), 10 * i, dtype=np.uint8) for i in range(3)]
    raw = datasets.Dataset.from_dict({"image": images, "label": [0, 1, 2]}, features=features)
    model = named(tiny_vit(), ["dog", "cat", "eel"])
    order = run_label_order(NAMES, [model.config.id2label[i] for i in range(3)], training=False)
    ds = with_transforms(raw, lambda image: torch.zeros(1), "image", "label", order)
    assert [ds[i]["labels"] for i in range(3)] == [model.config.label2id[n] for n in NAMES] == [1, 0, 2]


def test_resume_label_order_keeps_the_checkpoint_order_and_classes():
    assert resume_label_order(["dog", "cat"], ["cat", "dog"]) == ["cat", "dog"]
    assert resume_label_order(["dog", "cat"], ["LABEL_0", "LABEL_1"]) == ["dog", "cat"]  # only counted
    with pytest.raises(LabelError, match="the dataset has \\['cow'\\] that the checkpoint lacks"):
        resume_label_order(["cow", "dog"], ["cat", "dog"])
    with pytest.raises(LabelError, match="the checkpoint has \\['LABEL_2'\\] that the dataset lacks"):
        resume_label_order(["LABEL_0", "LABEL_1"], ["LABEL_0", "LABEL_1", "LABEL_2"])


CAFE_NFC, CAFE_NFD = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")


@pytest.mark.parametrize("compare,who", [
    (lambda: check_split_classes(["cat", CAFE_NFC], ["cat", CAFE_NFD]), "validation_dir and train_dir"),
    (lambda: check_validation_labels(["cat", CAFE_NFC], ["cat", CAFE_NFD]), "the validation split and the training"),
    (lambda: teacher_label_order(["cat", CAFE_NFD], ["cat", CAFE_NFC]), "teacher_model_name_or_path: the dataset"),
    (lambda: run_label_order(["cat", CAFE_NFD], ["cat", CAFE_NFC], training=True), "model_name_or_path: the dataset"),
    (lambda: run_label_order(["cat", CAFE_NFD], ["cat", CAFE_NFC], training=False), "model_name_or_path: the dataset"),
    (lambda: resume_label_order(["cat", CAFE_NFD], ["cat", CAFE_NFC]), "resume_from_checkpoint: the dataset"),
])
def test_names_that_differ_only_in_unicode_form_are_named_as_such(compare, who):
    """'café' typed two ways (NFC on Linux, NFD from macOS) prints the same twice: the error must
    say the forms differ and show each spelling escaped, not blame letter case or list 'café' as
    both missing and extra; even in training, where a pretrained head would be re-purposed."""
    with pytest.raises(LabelError) as error:
        compare()
    message = str(error.value)
    assert message.startswith(who) and "different Unicode forms" in message, message
    assert "'caf\\xe9', NFC" in message and "'cafe\\u0301', NFD" in message, message
    assert "case matters" not in message and "lacks" not in message, message


def test_a_form_clash_says_how_many_more_classes_clash_and_names_the_first_in_order():
    """The message names one clash (the first in sorted order, so a rerun says the same) and counts
    the others: with 'crème' and 'café' both typed two ways, the count was the only sign that renaming
    'café' would not be the end of it."""
    from hf_rcka.models.label_forms import check_same_forms

    creme_nfc, creme_nfd = (unicodedata.normalize(form, "crème") for form in ("NFC", "NFD"))
    with pytest.raises(LabelError) as error:
        check_same_forms([creme_nfc, CAFE_NFC], [CAFE_NFD, creme_nfd], "ours", "theirs", "rename")
    message = str(error.value)
    assert "the class 'café'" in message and "(and 1 more such classes)" in message, message
    with pytest.raises(LabelError) as error:
        check_same_forms([CAFE_NFC], [CAFE_NFD], "ours", "theirs", "rename")
    assert "more such classes" not in str(error.value)


def test_the_fix_names_the_models_form_and_case_differences_keep_their_message():
    with pytest.raises(LabelError, match=r"to the teacher's spelling \(NFD\)$"):
        teacher_label_order(["cat", CAFE_NFC], ["cat", CAFE_NFD])
    assert teacher_label_order(["cat", CAFE_NFC], ["cat", CAFE_NFD], "by_index") is None  # names not compared
    # a pretrained head of another class count is re-initialised for the dataset: its names do not matter
    assert run_label_order(["cat", CAFE_NFD], ["cat", CAFE_NFC, "dog"], training=True) == ["cat", CAFE_NFD]
    with pytest.raises(LabelError, match=r"lacks: \['Dog'\].*lacks: \['dog'\]\. .*\(case matters\)$"):
        check_split_classes(["cat", "dog"], ["cat", "Dog"])


def test_a_training_class_without_validation_images_is_said_not_refused(caplog):
    """A rare class with no validation folder blocked image-folder training (datasets gives both
    splits the training classes; Hub and CSV data with the same gap were accepted)."""
    with caplog.at_level(logging.WARNING):
        check_split_classes(["cat", "dog", "emu"], ["cat", "dog"])
    assert "train_dir has classes validation_dir lacks: ['emu']. They are trained, and the evaluation" in caplog.text
    with pytest.raises(LabelError, match=r"validation_dir has classes train_dir lacks: \['eel'\]$|\['eel'\]\. "):
        check_split_classes(["cat", "dog"], ["cat", "dog", "eel"])


def test_a_timm_checkpoint_s_class_names_follow_the_run_s(tmp_path):
    """A loaded timm checkpoint's config keeps its label_names, which to_dict saved over id2label: a
    student fine-tuned onto renamed or fewer classes was exported naming its old classes."""
    from transformers import TimmWrapperConfig

    from hf_rcka.models.label_maps import LabelMaps, set_labels

    config = TimmWrapperConfig.from_dict({"architecture": "resnet10t", "num_classes": 4,
                                          "label_names": ["red", "green", "blue", "yellow"]})
    names = ["red", "green", "purple"]
    set_labels(config, LabelMaps(dict(enumerate(names)), {n: i for i, n in enumerate(names)}))
    config.save_pretrained(tmp_path)
    assert TimmWrapperConfig.from_pretrained(tmp_path).id2label == dict(enumerate(names))


def test_a_timm_hub_checkpoint_s_class_names_are_compared_with_the_data_s(monkeypatch):
    """timm/<arch>.<tag> with its Hub weights kept its head row by row in the data's order: a
    checkpoint of the same classes in another order scored 0.0, and its export misnamed them."""
    from types import SimpleNamespace

    import hf_rcka.models.hf_config as hf_config
    from hf_rcka.cli.run_inputs import student_labels

    monkeypatch.setattr(hf_config, "load_config", lambda name, trust_remote_code=False: SimpleNamespace(
        id2label={0: "blue", 1: "red"}))
    args = SimpleNamespace(model_name_or_path="timm/resnet10t.colours", student_from_scratch=False,
                           trust_remote_code=False)
    assert student_labels(args) == ["blue", "red"]
    assert student_labels(SimpleNamespace(**{**vars(args), "student_from_scratch": True})) is None


def _imagenet() -> tuple[list[str], list[str]]:
    """ImageNet-1k's descriptions (an ImageNet classifier's id2label, as transformers infers a timm
    checkpoint's) and WordNet ids (ImageNet's folders), in the classes' order."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo("imagenet-1k")
    return list(info.label_descriptions()), list(info.label_names())


def test_an_imagenet_classifier_pairs_with_imagenet_folders_by_wordnet_id():
    """ImageNet's folders are WordNet ids, an ImageNet classifier's names descriptions: by name no
    ImageNet folder matched the headline recipe's teacher, and the run was refused after loading."""
    descriptions, ids = _imagenet()
    assert descriptions[134] == descriptions[517] == "crane"  # why no data set can carry these names
    assert teacher_label_order(ids, descriptions) is None
    shuffled = [ids[i] for i in np.random.default_rng(0).permutation(1000)]
    assert teacher_label_order(shuffled, descriptions) == [ids.index(name) for name in shuffled]
    assert run_label_order(ids, descriptions, training=False) == ids  # evaluating an ImageNet model on ImageNet
    with pytest.raises(LabelError, match="the teacher's classes do not match"):  # a subset: another class count
        teacher_label_order(ids[:10], descriptions)


def test_a_data_sets_second_crane_takes_the_place_the_model_repeats(caplog):
    """No data set can name two classes 'crane' as an ImageNet classifier does; one that lists the
    classes in the model's order and spells the second one otherwise matches it, with a warning.
    In another order (a sorted image folder: renaming the bird puts the machine's 'crane' first)
    the two could only be paired by guessing, which swapped them: refused, as is a spelling that
    does not begin with the repeated name."""
    descriptions, _ = _imagenet()
    spelt = list(descriptions)
    spelt[517] = "crane (machine)"
    with caplog.at_level(logging.WARNING, logger="hf_rcka"):
        assert teacher_label_order(spelt, descriptions) is None
    assert "134: 'crane', 517: 'crane (machine)'" in caplog.text
    assert run_label_order(spelt, descriptions, training=False) == spelt
    bird = list(descriptions)
    bird[134] = "crane (bird)"
    for names in (sorted(spelt), sorted(bird)):
        with pytest.raises(LabelError, match="the teacher's classes do not match"):
            teacher_label_order(names, descriptions)
        with pytest.raises(LabelError, match="cannot evaluate"):
            run_label_order(names, descriptions, training=False)
        with pytest.raises(LabelError, match=r"names \['crane'\] more than once"):  # a kept head (a second reviewer)
            run_label_order(names, descriptions, training=True)
    # the refusal's advice: by_index paired every class of data in another order with another's logit (exit
    # 0, the teacher at 0%), and the data cannot take the teacher's names, which repeat one
    with pytest.raises(LabelError) as refused:
        teacher_label_order(sorted(spelt), descriptions)
    assert "by_index" not in str(refused.value)
    assert "list the classes in the teacher's order, naming each class it names more than once (['crane'])" in str(
        refused.value)
    other = list(descriptions)
    other[517] = "construction crane"
    with pytest.raises(LabelError, match=r"the dataset has \['construction crane'\] that the teacher lacks"):
        teacher_label_order(other, descriptions)


def test_by_index_with_the_same_names_in_another_order_is_said(caplog):
    """Paired by position, two swapped classes of a thousand each took the other's logit: only an INFO
    line said the classes were paired by position, and the teacher check passes such a teacher."""
    import logging

    from hf_rcka.models.labels import BY_INDEX, teacher_label_order

    with caplog.at_level(logging.WARNING, logger="hf_rcka"):
        assert teacher_label_order(["a", "b", "c", "d"], ["a", "c", "b", "d"], BY_INDEX) is None
    assert "by_index pairs 2 class(es) of the dataset with a teacher logit of another name (class 1, 'b', with the " \
           "teacher's 'c')" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hf_rcka"):
        teacher_label_order(["a", "b"], ["x", "y"], BY_INDEX)  # other names: what by_index is for
        teacher_label_order(["a", "b"], ["a", "b"], BY_INDEX)
    assert "by_index pairs" not in caplog.text


def test_names_that_differ_from_the_teacher_s_in_case_and_order_are_not_advised_to_pair_by_position(caplog):
    """Data named 'Dog', 'Cat' (in that order) and a teacher's 'cat', 'dog': the refusal's fix was
    'set teacher_label_mapping: by_index', since no name was shared exactly, and that run then
    trained each class on the other's logit with exit 0 and no warning. The fix is renaming."""
    from hf_rcka.models.labels import BY_INDEX

    with pytest.raises(LabelError) as refused:
        teacher_label_order(["Dog", "Cat"], ["cat", "dog"])
    assert "by_index" not in str(refused.value)
    assert "differ only in case" in str(refused.value)
    with pytest.raises(LabelError, match=r"by_index to pair classes by position"):  # same places: by_index is right
        teacher_label_order(["Cat", "Dog"], ["cat", "dog"])
    with caplog.at_level(logging.WARNING, logger="hf_rcka"):
        assert teacher_label_order(["Dog", "Cat"], ["cat", "dog"], BY_INDEX) is None
    assert "by_index pairs 2 class(es) of the dataset with a teacher logit of another name (class 0, 'Dog', with " \
           "the teacher's 'cat')" in caplog.text


def test_only_a_name_the_model_repeats_may_be_spelt_otherwise(caplog):
    """The data may re-spell the second 'crane' (in any case: 'Crane (machine)'), and no other
    class: 'tench, Tinca tinca (fish)' for the model's 'tench, Tinca tinca' is another name, refused
    as any other is, even beside a re-spelt crane."""
    descriptions, _ = _imagenet()
    spelt = list(descriptions)
    spelt[517] = "Crane (machine)"
    with caplog.at_level(logging.WARNING, logger="hf_rcka"):
        assert teacher_label_order(spelt, descriptions) is None
    assert "517: 'Crane (machine)'" in caplog.text
    spelt[0] = descriptions[0] + " (fish)"
    with pytest.raises(LabelError, match="the teacher's classes do not match"):
        teacher_label_order(spelt, descriptions)


def test_imagenet_data_of_fewer_classes_than_the_model_is_told_apart_from_it():
    """Data of 999 of ImageNet's classes in the model's order (its last class left out, the second
    'crane' spelt otherwise) is not the model's 1000 classes: re-spelt, it passed for them and an
    ImageNet head of 1000 rows was evaluated on 999 classes. A subset of ImageNet's folders (WordNet
    ids) is named as such: the teacher has classes the data lacks, not the data ids the teacher lacks. A
    head of ImageNet's descriptions in another order was paired by ImageNet's order of ids, each row
    with another class."""
    descriptions, ids = _imagenet()
    fewer = descriptions[:999]
    fewer[517] = "crane (machine)"
    with pytest.raises(LabelError, match="cannot evaluate"):
        run_label_order(fewer, descriptions, training=False)
    with pytest.raises(LabelError, match="the teacher's classes do not match"):
        teacher_label_order(fewer, descriptions)
    with pytest.raises(LabelError) as refused:
        teacher_label_order(ids[:10], descriptions)
    assert f"the teacher has {ids[10:18]} and 982 more that the dataset lacks" in str(refused.value)
    assert "that the teacher lacks" not in str(refused.value)
    # a head of ImageNet's descriptions in another order is not ImageNet's: its rows are no WordNet ids in order
    with pytest.raises(LabelError, match="the teacher's classes do not match"):
        teacher_label_order(ids, descriptions[::-1])


def test_an_eval_only_student_of_unnamed_classes_and_another_class_count_is_refused():
    """A student whose classes are only numbered (LABEL_0...) can be checked by its class count
    alone; evaluating a two-class head on three-class data must be refused, not passed as if the
    unnamed classes were the data's (its third class has no output)."""
    assert run_label_order(NAMES, ["LABEL_0", "LABEL_1", "LABEL_2"], training=False) == NAMES  # only counted
    with pytest.raises(LabelError, match=r"cannot evaluate: .*the model has \['LABEL_0', 'LABEL_1'\]"):
        run_label_order(NAMES, ["LABEL_0", "LABEL_1"], training=False)
    with pytest.raises(LabelError, match="the checkpoint was trained on other classes"):
        resume_label_order(NAMES, ["LABEL_0", "LABEL_1"])


def test_a_partly_numbered_model_is_not_taken_for_an_unnamed_one():
    """Only a model whose every class is a placeholder (LABEL_0...) is counted rather than named:
    one real name among placeholders ('cat', 'dog', 'LABEL_2') names classes, so a teacher, a
    student or a checkpoint that lacks the data's 'eel' is refused, not waved through as unnamed."""
    partly = ["cat", "dog", "LABEL_2"]
    with pytest.raises(LabelError, match=r"the dataset has \['eel'\] that the teacher lacks"):
        teacher_label_order(NAMES, partly)
    with pytest.raises(LabelError, match="cannot evaluate"):
        run_label_order(NAMES, partly, training=False)
    with pytest.raises(LabelError, match=r"the dataset has \['eel'\] that the checkpoint lacks"):
        resume_label_order(NAMES, partly)


def test_a_student_that_repeats_a_name_is_not_the_dataset_s_classes():
    """The same set of names is not the same classes: a student naming 'crane' twice (an ImageNet
    classifier) on data with one 'crane' folder has one row more than the data has classes. Its
    1000-row head was kept as the run's class order for 999 classes; in training the head is
    re-initialised for the data's classes, and an evaluation is refused."""
    descriptions, _ = _imagenet()
    once = list(dict.fromkeys(descriptions))
    assert len(once) == 999
    assert run_label_order(once, descriptions, training=True) == once
    with pytest.raises(LabelError, match="cannot evaluate: the model has 1000 classes, the dataset 999"):
        run_label_order(once, descriptions, training=False)
    assert run_label_order(["a", "b"], ["a", "b", "b"], training=True) == ["a", "b"]
