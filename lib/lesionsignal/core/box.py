"""The one box type: integer pixel corners in the canvas frame, half-open (``x1 <= x < x2``, ``y1 <= y < y2``).

Perturbation patches, lesion boxes from annotation files and the boxes an encoder pools at are all ``Box``.
Building one does not judge it (a box read from a file may be wrong, and the reader must name the row, not crash);
``problem`` says what is wrong with it and ``checked`` raises ``InvalidBox`` with that reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral


class InvalidBox(ValueError):
    """A box that is not four integer corners with positive width and height inside the canvas."""


@dataclass(frozen=True)
class Box:
    x1: int
    y1: int
    x2: int
    y2: int

    @classmethod
    def of(cls, corners: Box | Sequence[int]) -> Box:
        """A Box from a Box or four integers (x1, y1, x2, y2); anything else raises InvalidBox."""
        if isinstance(corners, Box):
            return corners
        values = tuple(corners)
        if len(values) != 4 or not all(isinstance(v, Integral) and not isinstance(v, bool) for v in values):
            raise InvalidBox(f"box {values!r} must be four integers x1, y1, x2, y2")
        return cls(*(int(v) for v in values))

    @property
    def width(self) -> int:
        return self.x2 - self.x1

    @property
    def height(self) -> int:
        return self.y2 - self.y1

    @property
    def area(self) -> int:
        return self.width * self.height

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.x1, self.y1, self.x2, self.y2)

    def slices(self) -> tuple[slice, slice]:
        """Index of the box in a ``[y, x]`` array."""
        return slice(self.y1, self.y2), slice(self.x1, self.x2)

    @property
    def is_empty(self) -> bool:
        """Zero-area or inverted."""
        return self.x2 <= self.x1 or self.y2 <= self.y1

    def inside(self, canvas: int) -> bool:
        return min(self.x1, self.y1) >= 0 and max(self.x2, self.y2) <= canvas

    def problem(self, canvas: int | None = None) -> str | None:
        """Why the box is unusable (zero-area, inverted, off the ``canvas`` x ``canvas`` frame), or None."""
        if self.is_empty:
            return "is zero-area or inverted"
        if canvas is not None and not self.inside(canvas):
            return f"lies outside the {canvas} x {canvas} canvas"
        return None

    def checked(self, canvas: int | None = None) -> Box:
        """The box itself, or InvalidBox naming it and what is wrong."""
        reason = self.problem(canvas)
        if reason is not None:
            raise InvalidBox(f"box {self.as_tuple()} {reason}")
        return self


def centred_window(box: Box, side: int, canvas_size: int) -> tuple[slice, slice]:
    """A ``side`` x ``side`` window centred on the box centre, shifted (not shrunk) to stay on the canvas."""
    cy, cx = (box.y1 + box.y2) // 2, (box.x1 + box.x2) // 2
    y1 = min(max(cy - side // 2, 0), canvas_size - side)
    x1 = min(max(cx - side // 2, 0), canvas_size - side)
    return slice(y1, y1 + side), slice(x1, x1 + side)
