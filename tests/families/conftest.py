"""Fixtures of the family suites: every registered family's tiny stand-in (its `stand_in` hook), built once per
test module, and the policy loaded from it. The `palette` toy family (`toy_family/`) is registered here, as a new
family package would register itself, so every suite runs over it too."""

import pytest

from rlhf_img import load_policy
from rlhf_img.families import FAMILIES

from . import toy_family  # noqa: F401  (registers the `palette` family)

FAMILY_NAMES = sorted(name for name, family in FAMILIES.items() if family.stand_in is not None)


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def stand_in(request, tmp_path_factory):
    """(family name, `StandIn`) of each family with a stand-in."""
    name = request.param
    return name, FAMILIES[name].stand_in(str(tmp_path_factory.mktemp(name) / "stand-in"))


@pytest.fixture(scope="module")
def policy(stand_in):
    name, tiny = stand_in
    return load_policy(tiny.checkpoint, name, **tiny.load_kwargs)
