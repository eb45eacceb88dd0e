"""The named recipes ``bench distillers`` and ``finalize --distillers`` share."""

from __future__ import annotations

import pytest

from nas_kd.distill import make_settings
from nas_kd.distill.presets import PRESET_NAMES, PRESETS, Preset, select_presets


@pytest.mark.parametrize("preset", PRESETS, ids=PRESET_NAMES)
def test_every_preset_is_valid_for_its_distiller(preset: Preset) -> None:
    settings = make_settings(preset.distiller, preset.settings)  # a misspelt setting raises here
    assert {key: getattr(settings, key) for key in preset.settings} == preset.settings


def test_the_dkd_presets_differ_only_in_the_warm_up() -> None:
    published, unwarmed = (
        make_settings("offline", p.settings) for p in select_presets("offline-dkd,offline-dkd-no-warmup", "x")
    )
    assert (published.dkd_warmup, unwarmed.dkd_warmup) == (20, 0)
    assert published.model_dump(exclude={"dkd_warmup"}) == unwarmed.model_dump(exclude={"dkd_warmup"})


def test_selection_keeps_the_canonical_order_and_names_unknown_ones() -> None:
    assert [p.name for p in select_presets(" self, ce ", "--arms")] == ["ce", "self"]
    assert select_presets(None, "--arms") == list(PRESETS)
    with pytest.raises(ValueError, match=r"--arms: unknown \['telepathy'\]"):
        select_presets("ce,telepathy", "--arms")
