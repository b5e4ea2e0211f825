"""Tests for hf_rcka.registry: names, options and the 'did you mean' errors recipes rely on."""

from __future__ import annotations

import pytest

from hf_rcka import ADAPTERS, LOSSES
from hf_rcka.registry import Registry, close_matches


@pytest.fixture
def widgets() -> Registry:
    registry = Registry("widget")

    @registry.register("alpha_widget")
    class Alpha:
        def __init__(self, weight: float = 1.0, width: int = 36, *, depth: int = 3, **extra) -> None:
            self.weight, self.width, self.depth = weight, width, depth

    @registry.register("beta")
    class Beta:
        def __init__(self) -> None:
            pass

    return registry


def test_register_names_get_and_contains(widgets):
    assert widgets.names() == ["alpha_widget", "beta"]
    assert "beta" in widgets and "gamma" not in widgets
    cls = widgets.get("alpha_widget")
    assert cls.registry_name == "alpha_widget"


def test_registering_a_name_twice_is_an_error(widgets):
    with pytest.raises(ValueError, match="widget 'beta' is already registered"):
        widgets.register("beta")(type("Other", (), {}))


def test_option_names_are_the_keyword_arguments(widgets):
    assert widgets.option_names("alpha_widget") == ["weight", "width", "depth"]
    assert widgets.option_names("beta") == []


def test_build_passes_options_and_rejects_unknown_ones(widgets):
    built = widgets.build("alpha_widget", width=17, depth=5)
    assert (built.weight, built.width, built.depth) == (1.0, 17, 5)
    with pytest.raises(ValueError, match=r"widget 'alpha_widget' has no option 'widht'.*'width'"):
        widgets.build("alpha_widget", widht=17)
    with pytest.raises(ValueError, match=r"widget 'beta' takes no options \(got 'width'\)"):
        widgets.build("beta", width=17)


def test_unknown_loss_name_suggests_the_close_one():
    with pytest.raises(KeyError, match=r"unknown loss 'rcak': did you mean 'rcka'\?"):
        LOSSES.get("rcak")
    with pytest.raises(KeyError, match=r"'patch_cka'"):
        LOSSES.build("pach_cka")
    with pytest.raises(KeyError, match=r"'kernel_transfer'"):
        LOSSES.get("kernel_transfr")


def test_unknown_name_with_nothing_close_lists_every_valid_name():
    with pytest.raises(KeyError) as err:
        LOSSES.get("zzzzzzzz")
    message = str(err.value)
    assert "valid names:" in message
    for name in LOSSES.names():
        assert name in message


def test_unknown_option_names_the_option_and_close_valid_ones():
    with pytest.raises(ValueError, match=r"loss 'rcka' has no option 'intra_weigth': did you mean 'intra_weight'"):
        LOSSES.build("rcka", intra_weigth=3.0)
    with pytest.raises(ValueError, match=r"loss 'kd' has no option 'temprature'.*'temperature'"):
        LOSSES.check_options("kd", {"temprature": 2.0})
    with pytest.raises(ValueError, match=r"'kernel_transfer' has no option 'center'.*'centres'"):
        LOSSES.check_options("kernel_transfer", {"center": "running"})


def test_a_number_option_given_as_text_names_the_option():
    """It failed inside kd's constructor with "'<' not supported between instances of 'int' and 'str'"."""
    from hf_rcka.errors import RecipeError
    from hf_rcka.recipe_specs import validate_losses

    with pytest.raises(RecipeError, match=r"losses\[0\] \(kd\): option temperature must be a number, got '4'"):
        validate_losses([{"name": "kd", "temperature": "4"}])
    assert validate_losses([{"name": "kd", "temperature": 4}])[0]["temperature"] == 4
    import numpy as np
    import torch

    for value in (np.float32(2.0), np.int64(4), torch.tensor(4.0)):  # a sweep's values
        validate_losses([{"name": "kd", "temperature": value}])


def test_check_options_accepts_valid_options():
    LOSSES.check_options("rcka", {"weight": 1.0, "intra_weight": 15.0, "inter_weight": 15.0, "gather": True})
    LOSSES.check_options("patch_cka", {"patch_size": 4, "transpose": True})


def test_check_options_with_reserved_names():
    # 'weight' is set by the recipe machinery, so it is no option here ...
    with pytest.raises(ValueError, match=r"loss 'rcka' has no option 'weight'"):
        LOSSES.check_options("rcka", {"weight": 1.0}, reserved=("weight",))
    # ... and is never suggested for a typo that is close to it.
    with pytest.raises(ValueError) as err:
        LOSSES.check_options("kd", {"weigth": 1.0}, reserved=("weight",))
    assert "'weight'" not in str(err.value)
    # a loss whose only option is reserved takes no options at all
    with pytest.raises(ValueError, match=r"loss 'fitnet' takes no options \(got 'scale'\)"):
        LOSSES.check_options("fitnet", {"scale": 2.0}, reserved=("weight",))
    LOSSES.check_options("rcka", {"intra_weight": 1.0}, reserved=("weight",))


def test_every_loss_takes_a_weight_and_is_buildable_with_defaults():
    for name in LOSSES.names():
        assert "weight" in LOSSES.option_names(name)
        loss = LOSSES.build(name, weight=0.5)
        assert loss.weight == 0.5 and type(loss).registry_name == name


def test_close_matches_formats_hints():
    assert close_matches("rcak", ["rcka", "kd"]) == "did you mean 'rcka'?"
    assert close_matches("xyz", ["kd", "ce"]) == "valid names: ce, kd"
    assert close_matches("patch", ["patch_cka", "patch_match"]).startswith("did you mean 'patch_")


def test_adapter_registry_reports_its_kind():
    with pytest.raises(KeyError, match="unknown adapter 'no_such_adapter'"):
        ADAPTERS.get("no_such_adapter")


def test_import_hf_rcka_fills_both_registries_without_loading_transformers():
    import os
    import subprocess
    import sys

    code = (
        "import sys, hf_rcka\n"
        "print(','.join(hf_rcka.ADAPTERS.names()), ','.join(hf_rcka.LOSSES.names()), 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ), timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    adapters, losses, transformers_loaded = out.stdout.split()
    assert adapters.split(",") == ADAPTERS.names() and {"identity", "linear", "patch_match"} <= set(ADAPTERS.names())
    assert losses.split(",") == LOSSES.names()
    assert transformers_loaded == "False", "import hf_rcka stays light: the trainer loads transformers on first use"
