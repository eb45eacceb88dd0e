"""Named distillation recipes: a distiller and fixed settings under one short name.

``nas-kd bench distillers`` compares them on one student and ``nas-kd finalize --distillers`` runs them as a
small tournament per Pareto member, so both speak the same names. Settings not named keep the distiller's
defaults (``nas-kd list distillers``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Preset:
    name: str
    distiller: str
    settings: dict[str, Any]


PRESETS = (
    Preset("ce", "ce", {}),
    Preset("offline-response", "offline", {}),
    Preset("offline-feature", "offline", {"response": "none", "feature": "fitnet"}),
    Preset("offline-relation", "offline", {"response": "none", "relation": "rkd"}),
    Preset("offline-dkd", "offline", {"response": "dkd"}),
    # The published 20-epoch warm-up never finishes in a short run; this one shows what it costs there.
    Preset("offline-dkd-no-warmup", "offline", {"response": "dkd", "dkd_warmup": 0}),
    Preset("offline-ls-kd", "offline", {"response": "ls_kd"}),
    Preset("offline-dist", "offline", {"response": "dist"}),
    Preset("offline-crd", "offline", {"response": "none", "relation": "crd"}),
    Preset("online", "online", {}),
    Preset("self", "self", {}),
    Preset("assistant", "assistant", {}),
    Preset("multi_teacher", "multi_teacher", {}),
)
PRESET_NAMES = tuple(p.name for p in PRESETS)


def select_presets(names: str | None, option: str) -> list[Preset]:
    """``"ce,offline-dkd"`` -> those presets in the canonical order (all of them for None or "").

    Raises ValueError naming ``option`` and the known names for an unknown one.
    """
    if not names:
        return list(PRESETS)
    wanted = {name.strip() for name in names.split(",") if name.strip()}
    unknown = wanted - set(PRESET_NAMES)
    if unknown:
        raise ValueError(f"{option}: unknown {sorted(unknown)}; choose from {', '.join(PRESET_NAMES)}")
    return [p for p in PRESETS if p.name in wanted]
