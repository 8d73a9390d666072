"""Model builders register themselves by decorator; a name registered twice is an error naming both modules."""

from __future__ import annotations

import pytest

from cxrdist.models import build_model, list_models, register_model


def test_a_second_builder_of_a_registered_name_is_refused():
    with pytest.raises(ValueError, match="model 'chexnet' is registered twice"):
        register_model("chexnet")(lambda: None)
    assert list_models().count("chexnet") == 1


def test_an_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown model 'chexnot' \(known: .*chexnet"):
        build_model("chexnot")
