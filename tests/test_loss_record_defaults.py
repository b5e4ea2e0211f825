"""What a record of an earlier version is said to leave out, and srd's eps options."""
from __future__ import annotations

import math

import pytest

from hf_rcka.recipe_specs import earlier_defaults, resolved_specs
from hf_rcka.registry import LOSSES


def test_a_record_that_holds_the_option_is_not_said_to_leave_it_out():
    """A record written since every option is (rcka at 1/1 spelt out) is not an earlier version's."""
    recorded = resolved_specs([{"name": "rcka", "weight": 1.0}])
    assert recorded[0]["intra_weight"] == 1.0
    assert earlier_defaults(recorded, resolved_specs([{"name": "rcka", "weight": 1.0}])) == []


def test_every_earlier_default_is_said_for_a_record_that_leaves_it_out():
    """srd's eps changed default on 2026-12-05: a record without them is said, as rcka's weights are."""
    lines = earlier_defaults([{"name": "rcka", "weight": 1.0}, {"name": "srd", "weight": 1.0}],
                             resolved_specs([{"name": "rcka", "weight": 1.0}, {"name": "srd", "weight": 1.0}]))
    assert [line.split(" (")[0] for line in lines] == ["rcka intra_weight", "rcka inter_weight", "srd student_eps",
                                                       "srd teacher_eps"]
    assert "srd student_eps (its default was 1e-05 before 2026-12-05; this run: 1e-12)" in lines


def test_a_run_that_sets_a_changed_option_itself_is_not_said_to_take_its_default():
    """rcka's weights set by this run's recipe are its own choice, whatever the record left out: the
    run was said to take the current default ('this run: 3.0') for a value it set."""
    recorded = [{"name": "rcka", "weight": 1.0}]
    now = resolved_specs([{"name": "rcka", "weight": 1.0, "intra_weight": 3.0, "inter_weight": 1.0}])
    assert [line.split(" (")[0] for line in earlier_defaults(recorded, now)] == ["rcka inter_weight"]


def test_a_resume_that_sets_the_earlier_default_of_an_option_its_record_leaves_out_is_not_refused():
    """The way out for a record of an earlier version: set the earlier default (rcka 15/15). The record
    leaves the option out, so which value trained it is unknown and it is not compared; compared as the
    current default, the resume was refused as 'rcka intra_weight 1.0 -> 15.0'."""
    from hf_rcka.recipe_specs import loss_changes

    now = resolved_specs([{"name": "rcka", "weight": 1.0, "intra_weight": 15.0, "inter_weight": 15.0}])
    assert loss_changes([{"name": "rcka", "weight": 1.0}], now) == []
    assert loss_changes(resolved_specs([{"name": "rcka", "weight": 1.0}]), now) == [
        "rcka inter_weight 1.0 -> 15.0", "rcka intra_weight 1.0 -> 15.0"]


def test_a_resume_that_adds_or_drops_a_loss_is_a_change():
    """A resume that added a loss went through (only one that dropped one was said): its new loss's
    modules (srd's projector) then started mid-run from nothing, in a run recorded as the same recipe."""
    from hf_rcka.recipe_specs import loss_changes

    ce, both = [{"name": "ce", "weight": 1.0}], [{"name": "ce", "weight": 1.0}, {"name": "kd", "weight": 1.0}]
    assert loss_changes(ce, resolved_specs(both)) == ["losses ['ce'] -> ['ce', 'kd']"]
    assert loss_changes(resolved_specs(both), ce) == ["losses ['ce', 'kd'] -> ['ce']"]


def test_a_label_smoothing_factor_of_0_is_no_smoothing_as_none_is():
    """A record of label_smoothing_factor None (unset) resumed at 0.0 was refused as
    'ce label_smoothing None -> 0.0': both are no smoothing."""
    from hf_rcka.recipe_specs import loss_changes

    ce = [{"name": "ce", "weight": 1.0}]
    assert loss_changes(ce, ce, None, 0.0) == [] and loss_changes(ce, ce, 0.0, None) == []
    assert loss_changes(ce, ce, None, 0.1) == ["ce label_smoothing None -> 0.1"]


def test_a_label_smoothing_recorded_as_null_is_the_trainers_factor_as_one_left_out_is():
    """``label_smoothing: null`` is unset, as leaving it out is: ce then takes label_smoothing_factor."""
    from hf_rcka.recipe_specs import loss_changes

    null = [{"name": "ce", "weight": 1.0, "label_smoothing": None}]
    assert loss_changes(null, [{"name": "ce", "weight": 1.0}], 0.1, 0.1) == []
    assert loss_changes(null, [{"name": "ce", "weight": 1.0}], 0.1, 0.2) == ["ce label_smoothing 0.1 -> 0.2"]


@pytest.mark.parametrize("option", ["student_eps", "teacher_eps"])
@pytest.mark.parametrize("eps", [0.0, -1e-5, math.inf])
def test_srd_refuses_an_eps_that_is_not_positive_and_finite(option, eps):
    """eps inf makes the norm's output 0 (srd adds nothing, silently); 0 divides by a channel's variance."""
    with pytest.raises(ValueError, match=f"srd {option} must be > 0 and finite"):
        LOSSES.build("srd", **{option: eps})


def test_a_checkpoint_of_a_run_without_a_teacher_is_not_said_to_record_none(tmp_path, caplog):
    """Every resume of a run without a teacher said 'records no teacher (teacher.json, written by an earlier hf_rcka)'."""
    import logging

    from hf_rcka.trainer.checkpointing import _say_what_is_not_compared

    with caplog.at_level(logging.WARNING):
        _say_what_is_not_compared(str(tmp_path), False, [])
        assert "records no teacher" not in caplog.text
        _say_what_is_not_compared(str(tmp_path), True, [])
        assert "records no teacher" in caplog.text


def test_a_loss_record_is_written_whole_or_not_at_all(tmp_path):
    """Written in place, a record cut short (a kill, a value json cannot write) read as none, and its
    checkpoint resumed with other losses unchecked."""
    from hf_rcka.trainer.loss_record import read_loss_record, write_loss_record

    first = {"losses": [{"name": "ce", "weight": 1.0}], "feature_pairs": None}
    write_loss_record(str(tmp_path), first)
    with pytest.raises(TypeError):
        write_loss_record(str(tmp_path), {"losses": [{"name": "ce", "weight": object()}]})
    assert read_loss_record(str(tmp_path)) == first


def test_a_loss_record_that_is_no_json_object_is_no_record(tmp_path):
    """A loss_settings.json cut short or holding no object (null, a list) is no record: the resume
    check read it with .get and stopped on an AttributeError traceback, or a JSONDecodeError."""
    from hf_rcka.trainer.loss_record import LOSS_RECORD_NAME, check_loss_record, read_loss_record

    settings = {"losses": [{"name": "ce", "weight": 1.0}], "feature_pairs": None, "label_smoothing_factor": None}
    for text in ("null", "[1, 2]", '"ce"', '{"losses": [{"name": "ce"'):
        (tmp_path / LOSS_RECORD_NAME).write_text(text)
        assert read_loss_record(str(tmp_path)) is None, text
        assert check_loss_record(str(tmp_path), settings) == [], text


def test_the_resume_check_says_label_smoothing_recorded_to_now_and_returns_the_earlier_defaults(tmp_path):
    """The Python API's resume (trainer.train(resume_from_checkpoint=...)) says what check_loss_record
    returns: an earlier version's record without rcka's weights trained at 15/15, which the run would
    silently leave for today's 1/1. A smoothing changed since is said from the record to now."""
    import json

    from hf_rcka.errors import ModelError
    from hf_rcka.trainer.loss_record import LOSS_RECORD_NAME, check_loss_record

    earlier = [{"name": "ce", "weight": 1.0}, {"name": "rcka", "weight": 1.0}]
    now = {"losses": resolved_specs(earlier), "feature_pairs": None, "label_smoothing_factor": None}
    record = tmp_path / LOSS_RECORD_NAME
    record.write_text(json.dumps({"losses": earlier, "feature_pairs": None, "label_smoothing_factor": 0.1}))
    with pytest.raises(ModelError, match=r"other loss settings \(ce label_smoothing 0\.1 -> None\)"):
        check_loss_record(str(tmp_path), now)
    record.write_text(json.dumps({"losses": earlier, "feature_pairs": None, "label_smoothing_factor": None}))
    assert [line.split(" (")[0] for line in check_loss_record(str(tmp_path), now)] == ["rcka intra_weight",
                                                                                      "rcka inter_weight"]
