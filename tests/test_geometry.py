"""Box-to-token geometry against hand-computed token indices and a brute-force pixel rasterisation."""

from __future__ import annotations

import numpy as np
import pytest

from lesionsignal.core.box import InvalidBox
from lesionsignal.features.geometry import BoxOutsideCrop, Geometry, GeometryMismatch

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
DINOV2 = Geometry(256, 224, 14, *IMAGENET, "bicubic")  # dinov2-b14: scale 1/4, offset 16, grid 16
RAD_DINO = Geometry(518, None, 14, (0.5307,) * 3, (0.2583,) * 3, "bicubic")  # scale 518/1024, grid 37
SIGLIP_448 = Geometry(448, None, 14, (0.5,) * 3, (0.5,) * 3, "bicubic")  # scale 7/16, grid 32


def test_derived_sizes() -> None:
    assert (DINOV2.input_size, DINOV2.grid, DINOV2.crop_offset) == (224, 16, 16)
    assert (RAD_DINO.input_size, RAD_DINO.grid, RAD_DINO.crop_offset) == (518, 37, 0)
    assert (SIGLIP_448.input_size, SIGLIP_448.grid, SIGLIP_448.crop_offset) == (448, 32, 0)
    assert DINOV2.kept_canvas_range(1024) == (64.0, 960.0)


# Each case: canvas box -> model-input box -> cells, worked out by hand in the comment.
HAND_CASES = [
    # 0.25 -> (128,128,130,130) -16 -> (112,112,114,114): cell 8 of [112,126) on both axes -> 8*16+8
    (DINOV2, (512, 512, 520, 520), (112, 112, 114, 114), [136]),
    # (110,94,130,98) -16 -> (94,78,114,82): cols 6 [84,98) 7 [98,112) 8 [112,126); row 5 [70,84)
    (DINOV2, (440, 376, 520, 392), (94, 78, 114, 82), [86, 87, 88]),
    # (114,114,128,128) -16 -> (98,98,112,112): exactly cell 7; cells 6 and 8 only touch its edges
    (DINOV2, (456, 456, 512, 512), (98, 98, 112, 112), [119]),
    # (0,0,20,20) -16 -> (-16,-16,4,4), clipped to (0,0,4,4): cell 0
    (DINOV2, (0, 0, 80, 80), (0, 0, 4, 4), [0]),
    # (225,225,250,250) -16 -> (209,209,234,234), clipped to 224: cells 14 [196,210) and 15 on both axes
    (DINOV2, (900, 900, 1000, 1000), (209, 209, 224, 224), [238, 239, 254, 255]),
    # 518/1024: (259, 259, 263.046875, ...): cell 18 of [252,266) -> 18*37+18
    (RAD_DINO, (512, 512, 520, 520), (259, 259, 263.046875, 263.046875), [684]),
    # 28 * 518/1024 = 14.1640625 > 14: the box spills into cells 1 on both axes
    (RAD_DINO, (0, 0, 28, 28), (0, 0, 14.1640625, 14.1640625), [0, 1, 37, 38]),
    # x (505.859375, 518): last column 36 [504,518); y (0, 5.05859375): row 0
    (RAD_DINO, (1000, 0, 1024, 10), (505.859375, 0, 518, 5.05859375), [36]),
    # 7/16: (224,224,227.5,227.5): cell 16 [224,238); cell 15 [210,224) only touches -> 16*32+16
    (SIGLIP_448, (512, 512, 520, 520), (224, 224, 227.5, 227.5), [528]),
    # x (14,42): cols 1,2 (col 3 starts at 42); y (28,70): rows 2,3,4 (row 5 starts at 70)
    (SIGLIP_448, (32, 64, 96, 160), (14, 28, 42, 70), [65, 66, 97, 98, 129, 130]),
]


@pytest.mark.parametrize(
    ("geometry", "box", "mapped", "indices"), HAND_CASES, ids=[f"{g.resize}-{g.crop}{b}" for g, b, _, _ in HAND_CASES]
)
def test_hand_computed_cases(geometry: Geometry, box, mapped, indices) -> None:
    assert geometry.map_box(box) == pytest.approx(mapped, abs=1e-12)
    assert geometry.token_indices(box).tolist() == indices
    mask = geometry.token_mask(box)
    assert mask.shape == (geometry.grid, geometry.grid) and mask.dtype == bool
    assert sorted(r * geometry.grid + c for r, c in zip(*np.nonzero(mask), strict=True)) == indices


@pytest.mark.parametrize(
    "box",
    [
        (0, 0, 64, 64),  # maps to (-16,-16,0,0): only touches the crop corner
        (0, 300, 64, 700),  # left border band
        (960, 300, 1024, 700),  # right band: x maps to [224, 240), wholly past the crop
        (300, 0, 700, 60),  # top band
        (300, 961, 700, 1024),  # bottom band
    ],
)
def test_box_in_cropped_border_raises(box) -> None:
    with pytest.raises(BoxOutsideCrop, match=r"wholly outside") as err:
        DINOV2.token_indices(box)
    assert err.value.box == box and str(box) in str(err.value)
    with pytest.raises(BoxOutsideCrop):
        DINOV2.map_box(box)


def test_one_more_pixel_crosses_the_border() -> None:
    # (456,456,512,512) fills cell 7 exactly; one canvas pixel more reaches 112.25 and so cell 8 on x.
    assert DINOV2.token_indices((456, 456, 513, 512)).tolist() == [119, 120]
    assert DINOV2.token_indices((455, 456, 512, 512)).tolist() == [118, 119]


def test_no_crop_geometry_never_raises_for_valid_boxes() -> None:
    assert RAD_DINO.token_indices((0, 0, 1, 1)).tolist() == [0]
    assert RAD_DINO.token_indices((1023, 1023, 1024, 1024)).tolist() == [37 * 37 - 1]


@pytest.mark.parametrize(
    "box",
    [(10, 10, 10, 20), (20, 10, 10, 30), (-1, 0, 5, 5), (0, 0, 1025, 5), (0.5, 0, 5, 5), (0, 0, 5)],
)
def test_invalid_boxes(box) -> None:
    with pytest.raises(InvalidBox, match="box"):
        DINOV2.token_mask(box)


def test_numpy_integer_boxes_are_accepted() -> None:
    box = np.array([512, 512, 520, 520], dtype=np.int64)
    assert DINOV2.token_indices(tuple(box)).tolist() == [136]


def _brute_force(geometry: Geometry, box, canvas_px_per_cell: int, canvas_offset: int) -> np.ndarray:
    """Cells that contain at least one canvas pixel of the box (exact when a cell is a whole canvas block)."""
    canvas = np.zeros((1024, 1024), dtype=bool)
    x1, y1, x2, y2 = box
    canvas[y1:y2, x1:x2] = True
    side = geometry.grid * canvas_px_per_cell
    kept = canvas[canvas_offset : canvas_offset + side, canvas_offset : canvas_offset + side]
    blocks = kept.reshape(geometry.grid, canvas_px_per_cell, geometry.grid, canvas_px_per_cell)
    return blocks.any(axis=(1, 3))


@pytest.mark.parametrize(("geometry", "cell", "offset"), [(DINOV2, 56, 64), (SIGLIP_448, 32, 0)])
def test_matches_pixel_rasterisation(geometry: Geometry, cell: int, offset: int) -> None:
    # For these two, a token cell is a whole block of canvas pixels (14 px * 4 = 56; 14 px * 16/7 = 32), so
    # "the cell meets the box with positive area" is "the block holds a box pixel".
    rng = np.random.default_rng(7)
    checked = 0
    for _ in range(300):
        x1, y1 = rng.integers(0, 1000, size=2)
        w, h = rng.integers(1, 120, size=2)
        box = (int(x1), int(y1), int(min(x1 + w, 1024)), int(min(y1 + h, 1024)))
        expected = _brute_force(geometry, box, cell, offset)
        if not expected.any():
            with pytest.raises(BoxOutsideCrop):
                geometry.token_mask(box)
            continue
        np.testing.assert_array_equal(geometry.token_mask(box), expected, err_msg=str(box))
        checked += 1
    assert checked > 250


def test_geometry_validation() -> None:
    with pytest.raises(ValueError, match="divide"):
        Geometry(250, None, 16, *IMAGENET, "bicubic")
    with pytest.raises(ValueError, match="crop"):
        Geometry(224, 256, 16, *IMAGENET, "bicubic")
    with pytest.raises(ValueError, match="interpolation"):
        Geometry(224, None, 16, *IMAGENET, "nearest")  # type: ignore[arg-type]


def test_odd_crop_difference_uses_floor() -> None:
    # Hugging Face processors take the floor of (resize - crop) / 2; torchvision's CenterCrop would round 17.5 to 18.
    g = Geometry(266, 224, 14, *IMAGENET, "bicubic")
    assert g.crop_offset == 21
    g = Geometry(259, 224, 14, *IMAGENET, "bicubic")
    assert g.crop_offset == 17
    # canvas 1024 -> 259: the kept band starts at 17 * 1024 / 259 canvas px
    assert g.kept_canvas_range(1024)[0] == pytest.approx(17 * 1024 / 259)


def test_from_processor_config() -> None:
    dinov2_base = {
        "crop_size": {"height": 224, "width": 224},
        "do_center_crop": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.485, 0.456, 0.406],
        "image_processor_type": "BitImageProcessor",
        "image_std": [0.229, 0.224, 0.225],
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "size": {"shortest_edge": 256},
    }
    assert Geometry.from_processor_config(dinov2_base, patch=14) == DINOV2
    rad = {**dinov2_base, "size": {"shortest_edge": 518}, "crop_size": {"height": 518, "width": 518}}
    rad |= {"image_mean": [0.5307] * 3, "image_std": [0.2583] * 3}
    parsed = Geometry.from_processor_config(rad, patch=14)
    assert parsed.crop == 518 and RAD_DINO.differences(parsed) == []  # a crop equal to the resize is no crop
    siglip = {"size": {"height": 448, "width": 448}, "resample": 3, "image_mean": 0.5, "image_std": [0.5] * 3}
    assert Geometry.from_processor_config(siglip, patch=14) == SIGLIP_448
    dinov3 = {"size": {"height": 224, "width": 224}, "image_processor_type": "DINOv3ViTImageProcessorFast"}
    dinov3 |= {"image_mean": list(IMAGENET[0]), "image_std": list(IMAGENET[1])}
    v3 = Geometry.from_processor_config(dinov3, patch=16)
    assert (v3.interpolation, v3.resize_in_uint8) == ("bilinear", False)

    moved = {**dinov2_base, "image_mean": [0.5, 0.5, 0.5]}
    diffs = DINOV2.differences(Geometry.from_processor_config(moved, patch=14))
    assert len(diffs) == 1 and diffs[0].startswith("mean")
    with pytest.raises(GeometryMismatch, match="resample"):
        Geometry.from_processor_config({**dinov2_base, "resample": 0}, patch=14, source="x.json")
    with pytest.raises(GeometryMismatch, match=r"x\.json: size"):
        Geometry.from_processor_config({**dinov2_base, "size": {"height": 3, "width": 4}}, patch=14, source="x.json")
