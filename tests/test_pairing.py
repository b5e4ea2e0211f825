"""Feature pairs: one definition of a pair's recipe keys, shared by recipe checks and the model."""

import pytest

from hf_rcka import FeaturePair as TopLevelFeaturePair
from hf_rcka.features.pairing import RESERVED_PAIR_KEYS as CONFIG_KEYS
from hf_rcka.features.layout import FeatureSpec
from hf_rcka.features.pairing import RESERVED_PAIR_KEYS, FeaturePair, choose_pairs, pairs_from_config
from hf_rcka.modeling import FeaturePair as ModelingFeaturePair


def test_reserved_keys_are_the_pair_fields_a_recipe_names():
    assert RESERVED_PAIR_KEYS == ("student_layer", "teacher_layer", "adapter")
    assert CONFIG_KEYS is RESERVED_PAIR_KEYS
    assert TopLevelFeaturePair is FeaturePair and ModelingFeaturePair is FeaturePair


def test_recipe_entries_split_into_fields_and_adapter_options():
    entry = {"student_layer": -1, "teacher_layer": 2, "adapter": "patch_match", "project": True}
    ready = FeaturePair(1, 1)
    parsed, kept = pairs_from_config([entry, ready])
    assert parsed == FeaturePair(-1, 2, "patch_match", {"project": True})
    assert kept is ready
    assert FeaturePair.from_recipe({"student_layer": 0, "teacher_layer": 0}).adapter == "auto"


def test_chosen_pairs_have_non_negative_checked_indices():
    specs = [FeatureSpec("nchw", 8, (4, 4), 0, 4.0, False) for _ in range(3)]
    (pair,) = choose_pairs([{"student_layer": -1, "teacher_layer": -3, "adapter": "identity"}], specs, specs)
    assert (pair.student_layer, pair.teacher_layer, pair.adapter) == (2, 0, "identity")
    with pytest.raises(IndexError, match="3 hidden states"):
        choose_pairs([{"student_layer": 3, "teacher_layer": 0}], specs, specs)
    assert all(p.reason for p in choose_pairs("auto", specs, specs))


def test_auto_pairs_for_a_model_without_blocks_are_one_line():
    """A ViT student of ``num_hidden_layers: 0`` with feature losses and ``feature_pairs: auto``
    failed with a bare ValueError's traceback once both models had loaded."""
    from hf_rcka.errors import ModelError

    specs = [FeatureSpec("nchw", 8, (4, 4), 0, 4.0, False) for _ in range(3)]
    with pytest.raises(ModelError, match=r"^feature_pairs: auto finds no hidden state of the student's to pair"):
        choose_pairs("auto", [], specs)
    with pytest.raises(ModelError, match=r"of the teacher's to pair .* teacher_config_overrides num_hidden_layers: 0"):
        choose_pairs("auto", specs, [])
