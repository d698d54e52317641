"""Two ways of drawing the same panel: the protocol's (``spec``) and the authors' public code's (``authors``).

The paper's numbers came from the authors' code, which departs from the protocol text in a handful of pixel-level
details. Each detail is one switch of ``PanelSwitches``; a convention is a named setting of every switch, and any
switch can also be set alone (``PanelSwitches.for_convention(c).with_overrides({...})``). Protocol section 2
lists both conventions side by side with the measured effect of each switch.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

from lesionsignal.core.canvas import Resample
from lesionsignal.stimuli.panel import PanelError


class Convention(enum.Enum):
    SPEC = "spec"  # the protocol text: the project's own convention
    AUTHORS = "authors"  # the authors' public code, pixel for pixel (the paper's numbers)


class PlacementBound(enum.Enum):
    """Upper bound of the top-left corner's draw, on each axis."""

    SYMMETRIC = "symmetric"  # [lo, S - lo - P] inclusive, lo = int(m S): the patch fills the region's both sides
    AUTHORS = "authors"  # [lo, int(S (1 - m)) - P) exclusive: 1 to 2 px short of the region's far side


class CircleCentre(enum.Enum):
    """Where a geometric circle is centred, and so how many pixels it covers."""

    BOX_CENTRE = "box_centre"  # ((P - 1) / 2, (P - 1) / 2): r = 1 covers 4 px, r = 2 covers 12 px
    PIXEL = "pixel"  # the pixel (P // 2, P // 2), as cv2.circle draws it: r = 1 covers 5 px, r = 2 covers 13 px


class DiagonalCoin(enum.Enum):
    """Which diagonal the geometric line's coin picks when it draws 1."""

    ONE_IS_ANTI = "one_is_anti"
    ONE_IS_MAIN = "one_is_main"


class PatchClip(enum.Enum):
    """Which families end with the whole P x P patch clipped to the drawn gray range [20, 235]."""

    GEOMETRIC = "geometric"  # only the drawn families; blurs and textures keep their full 0..255
    EVERY_FAMILY = "every_family"


class TextureCast(enum.Enum):
    """How an added float texture becomes uint8 (after clipping to 0..255)."""

    ROUND = "round"  # half to even
    TRUNCATE = "truncate"  # numpy's astype(uint8): towards zero


class BumpCentre(enum.Enum):
    """Centre of the ground-glass Gaussian bump inside its patch."""

    PIXEL_MEAN = "pixel_mean"  # (P - 1) / 2: the bump is symmetric on the patch's pixels
    HALF_SIDE = "half_side"  # P / 2: half a pixel down and right


@dataclass(frozen=True)
class PanelSwitches:
    """Every pixel-level choice the two conventions make differently; the defaults are the spec convention."""

    placement: PlacementBound = PlacementBound.SYMMETRIC
    circle: CircleCentre = CircleCentre.BOX_CENTRE
    diagonal: DiagonalCoin = DiagonalCoin.ONE_IS_ANTI
    clip: PatchClip = PatchClip.GEOMETRIC
    texture_cast: TextureCast = TextureCast.ROUND
    bump_centre: BumpCentre = BumpCentre.PIXEL_MEAN
    resample: Resample = Resample.FLOAT

    @classmethod
    def for_convention(cls, convention: Convention) -> PanelSwitches:
        return _CONVENTIONS[convention]

    def with_overrides(self, overrides: Mapping[str, str]) -> PanelSwitches:
        """These switches with some set by name to a value's text, e.g. ``{"resample": "float"}``."""
        kinds = {f.name: type(getattr(self, f.name)) for f in fields(self)}
        changed = {}
        for name, text in overrides.items():
            if name not in kinds:
                raise PanelError(f"unknown panel switch {name!r} (known: {', '.join(kinds)})")
            try:
                changed[name] = kinds[name](text)
            except ValueError:
                allowed = ", ".join(v.value for v in kinds[name])
                raise PanelError(f"panel switch {name}: unknown value {text!r} (allowed: {allowed})") from None
        return replace(self, **changed)

    def differences(self, other: PanelSwitches) -> tuple[str, ...]:
        """Names of the switches set differently in ``other``."""
        return tuple(f.name for f in fields(self) if getattr(self, f.name) != getattr(other, f.name))


_CONVENTIONS: Mapping[Convention, PanelSwitches] = {
    Convention.SPEC: PanelSwitches(),
    Convention.AUTHORS: PanelSwitches(
        placement=PlacementBound.AUTHORS,
        circle=CircleCentre.PIXEL,
        diagonal=DiagonalCoin.ONE_IS_MAIN,
        clip=PatchClip.EVERY_FAMILY,
        texture_cast=TextureCast.TRUNCATE,
        bump_centre=BumpCentre.HALF_SIDE,
        resample=Resample.UINT8,
    ),
}

SPEC = PanelSwitches.for_convention(Convention.SPEC)
