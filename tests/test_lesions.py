"""Natural-lesion analyses: image-level targets and strata, stratum AUCs, box-level negatives and their strata."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from lesionsignal.analysis.lesions import (
    BoxSample,
    LesionError,
    LesionImage,
    NegativePlacement,
    assign_strata,
    box_level_samples,
    box_level_strata,
    image_level_targets,
    samples_frame,
    stratum_auc,
)
from lesionsignal.core.box import Box

NODULE = "Nodule"
MASS = "Mass"


def square(x: int, y: int, side: int) -> Box:
    return Box(x, y, x + side, y + side)


def hand_images() -> list[LesionImage]:
    """Test positives with median nodule areas 100, 500, 900, 1600 (median 700): p1, p2 small, p3, p4 large."""
    return [
        LesionImage("p1.png", "test", ((NODULE, square(100, 100, 10)),)),
        LesionImage(
            "p2.png", "test", ((NODULE, square(200, 200, 10)), (MASS, square(0, 0, 50)), (NODULE, square(300, 300, 30)))
        ),
        LesionImage("p3.png", "test", ((NODULE, square(400, 400, 30)),)),
        LesionImage("p4.png", "test", ((NODULE, square(500, 500, 40)),)),
        LesionImage("n1.png", "test", ()),
        LesionImage("n2.png", "test", ()),
        LesionImage("n3.png", "test", ((MASS, square(600, 600, 60)),)),  # another class: still nodule-negative
        LesionImage("t1.png", "train", ((NODULE, square(10, 10, 5)),)),
        LesionImage("t2.png", "train", ()),
    ]


def test_image_level_targets_label_and_median_area() -> None:
    frame = image_level_targets(hand_images(), NODULE).set_index("image_id")
    assert list(frame["label"]) == [1, 1, 1, 1, 0, 0, 0, 1, 0]
    assert frame.loc["p2.png", "area"] == 500.0  # median of 100 and 900; the Mass box does not count
    assert frame.loc["p4.png", "area"] == 1600.0
    assert frame.loc[["n1.png", "n2.png", "n3.png", "t2.png"], "area"].isna().all()
    assert frame.loc["t1.png", "split"] == "train"
    mass = image_level_targets(hand_images(), MASS).set_index("image_id")
    assert mass.loc["n3.png", "label"] == 1 and mass.loc["p1.png", "label"] == 0


def test_assign_strata_on_the_hand_example() -> None:
    strata = assign_strata(image_level_targets(hand_images(), NODULE), split="test")
    by_id = dict(zip(strata["image_id"], strata["stratum"], strict=True))
    assert by_id == {
        "p1.png": "small",
        "p2.png": "small",
        "p3.png": "large",
        "p4.png": "large",
        "n1.png": "negative",
        "n2.png": "negative",
        "n3.png": "negative",
    }
    assert list(strata.index) == [0, 1, 2, 3, 4, 5, 6]  # original index kept for alignment with scores


def test_assign_strata_tie_at_the_median_goes_to_small() -> None:
    frame = pd.DataFrame(
        {
            "image_id": ["a", "b", "c", "n"],
            "split": "test",
            "label": [1, 1, 1, 0],
            "area": [100.0, 400.0, 900.0, math.nan],
        }
    )
    assert list(assign_strata(frame)["stratum"]) == ["small", "small", "large", "negative"]


def test_stratum_auc_by_hand_large_is_easier() -> None:
    strata = assign_strata(image_level_targets(hand_images(), NODULE))
    scores = {"p1.png": 0.3, "p2.png": 0.6, "p3.png": 0.9, "p4.png": 0.8, "n1.png": 0.5, "n2.png": 0.2, "n3.png": 0.4}
    result = stratum_auc(strata["label"], strata["image_id"].map(scores), strata["stratum"])
    # small: p1 (0.3) beats one of three negatives, p2 (0.6) beats all three: 4 / 6. large: both beat all: 1.
    assert result["small"] == pytest.approx(2 / 3)
    assert result["large"] == pytest.approx(1.0)
    assert result["gap"] == pytest.approx(1 / 3)
    assert result["gap"] > 0
    flipped = stratum_auc(strata["label"], strata["image_id"].map(scores).rsub(1.0), strata["stratum"])
    assert flipped["gap"] < 0


def test_stratum_auc_uses_only_own_negatives_when_they_carry_a_stratum() -> None:
    # Box level: the large stratum's negatives score high, which must not affect the small stratum's AUC.
    y = [1, 0, 1, 0]
    scores = [0.9, 0.1, 0.5, 0.95]
    strata = ["small", "small", "large", "large"]
    result = stratum_auc(y, scores, strata)
    assert result == {"small": 1.0, "large": 0.0, "gap": -1.0}


@pytest.mark.parametrize(
    ("y", "scores", "strata", "needle"),
    [
        ([1, 0, 1], [0.1, 0.2, 0.3], ["small", "negative", "medium"], "unknown"),
        ([1, 0, 1], [0.1, 0.2, 0.3], ["negative", "negative", "large"], "positive labelled"),
        ([1, 0, 0], [0.1, 0.2, 0.3], ["small", "negative", "negative"], "'large'"),
        ([1, 0, 1], [0.1, math.nan, 0.3], ["small", "negative", "large"], "row 1"),
        ([1, 2, 1], [0.1, 0.2, 0.3], ["small", "negative", "large"], "0 or 1"),
        ([1, 0], [0.1, 0.2, 0.3], ["small", "negative", "large"], "one length"),
    ],
)
def test_stratum_auc_errors(y: list[int], scores: list[float], strata: list[str], needle: str) -> None:
    with pytest.raises(LesionError, match=needle):
        stratum_auc(y, scores, strata)


def test_assign_strata_errors() -> None:
    frame = image_level_targets(hand_images(), NODULE)
    with pytest.raises(LesionError, match="split 'val'"):
        assign_strata(frame, split="val")
    same = frame.assign(area=frame["area"].where(frame["label"] == 0, 100.0))
    with pytest.raises(LesionError, match="large stratum is empty"):
        assign_strata(same)
    with pytest.raises(LesionError, match="missing columns"):
        assign_strata(frame.drop(columns="area"))


def test_image_level_errors() -> None:
    with pytest.raises(LesionError, match=r"'nodule'.*Mass.*Nodule"):
        image_level_targets(hand_images(), "nodule")
    with pytest.raises(LesionError, match=r"p1\.png: image id appears more than once"):
        image_level_targets([*hand_images(), LesionImage("p1.png", "train", ())], NODULE)
    with pytest.raises(LesionError, match=r"x\.png: box 0"):
        LesionImage("x.png", "test", (("Nodule", (1, 2, 3, 4)),))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ box level


def random_images(seed: int, n_pos: int = 30, n_neg: int = 40) -> list[LesionImage]:
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n_pos + n_neg):
        split = "test" if i % 3 == 0 else "train"
        boxes: list[tuple[str, Box]] = []
        if i < n_pos:
            for _ in range(int(rng.integers(1, 3))):
                w, h = (int(v) for v in rng.integers(5, 200, size=2))
                x, y = int(rng.integers(0, 1024 - w)), int(rng.integers(0, 1024 - h))
                boxes.append((NODULE, Box(x, y, x + w, y + h)))
        if i % 4 == 0:
            boxes.append((MASS, square(10, 10, 80)))
        images.append(LesionImage(f"{i:05d}.png", split, tuple(boxes)))
    return images


def check_structure(images: list[LesionImage], samples: list[BoxSample], k: int) -> None:
    by_id = {image.image_id: image for image in images}
    positives = [s for s in samples if s.label == 1]
    assert len(positives) == sum(len(image.boxes_of(NODULE)) for image in images)
    assert len(samples) == len(positives) * (1 + k)
    for index, sample in enumerate(samples):
        assert sample.group == sample.image_id
        if sample.label == 1:
            assert sample.source_box == index
            continue
        source = samples[sample.source_box]
        assert source.label == 1
        assert sample.split == source.split  # same split
        assert not by_id[sample.image_id].boxes_of(NODULE)  # a class-negative image
        assert (sample.box.width, sample.box.height) == (source.box.width, source.box.height)
        assert min(sample.box.x1, sample.box.y1) >= 0 and max(sample.box.x2, sample.box.y2) <= 1024


def test_same_position_negatives_match_size_and_position() -> None:
    images = random_images(0)
    samples = box_level_samples(images, NODULE)
    check_structure(images, samples, 2)
    for sample in samples:
        assert sample.box == samples[sample.source_box].box
    # Two different negative images per positive when the split has enough.
    for index, sample in enumerate(samples):
        if sample.label == 1:
            assert samples[index + 1].image_id != samples[index + 2].image_id
    # Images carrying only other classes' boxes are drawn too.
    assert any(int(s.image_id[:5]) % 4 == 0 for s in samples if s.label == 0)


def test_uniform_negatives_keep_size_and_stay_in_the_canvas() -> None:
    images = random_images(1)
    uniform = NegativePlacement.UNIFORM
    samples = box_level_samples(images, NODULE, placement=uniform, negatives_per_positive=3, canvas=1024)
    check_structure(images, samples, 3)
    negatives = [s for s in samples if s.label == 0]
    moved = sum(s.box != samples[s.source_box].box for s in negatives)
    assert moved == len(negatives)  # a chance coincidence has probability ~1e-5 per box
    small_canvas = [LesionImage("a.png", "test", ((NODULE, Box(0, 0, 30, 20)),)), LesionImage("b.png", "test", ())]
    for sample in box_level_samples(small_canvas, NODULE, placement=NegativePlacement.UNIFORM, canvas=32, seed=3):
        assert sample.box.x2 <= 32 and sample.box.y2 <= 32 and sample.box.area == 600


def test_box_level_samples_deterministic_and_seeded() -> None:
    images = random_images(2)
    first = box_level_samples(images, NODULE, placement=NegativePlacement.UNIFORM, seed=7)
    assert first == box_level_samples(images, NODULE, placement=NegativePlacement.UNIFORM, seed=7)
    assert first != box_level_samples(images, NODULE, placement=NegativePlacement.UNIFORM, seed=8)
    assert samples_frame(first).equals(
        samples_frame(box_level_samples(images, NODULE, placement=NegativePlacement.UNIFORM, seed=7))
    )


def test_single_negative_image_is_reused() -> None:
    images = [LesionImage("a.png", "test", ((NODULE, square(5, 5, 10)),)), LesionImage("b.png", "test", ())]
    samples = box_level_samples(images, NODULE)
    assert [(s.image_id, s.label) for s in samples] == [("a.png", 1), ("b.png", 0), ("b.png", 0)]


def test_box_level_errors() -> None:
    no_negative = [
        LesionImage("a.png", "train", ((NODULE, square(5, 5, 10)),)),
        LesionImage("b.png", "test", ()),
    ]
    with pytest.raises(LesionError, match="split 'train', class 'Nodule'"):
        box_level_samples(no_negative, NODULE)
    with pytest.raises(LesionError, match="Calcification"):
        box_level_samples(hand_images(), "Calcification")
    outside = [LesionImage("a.png", "test", ((NODULE, Box(1000, 5, 1030, 15)),)), LesionImage("b.png", "test", ())]
    with pytest.raises(LesionError, match=r"a\.png: box"):
        box_level_samples(outside, NODULE)
    with pytest.raises(LesionError, match="negatives_per_positive"):
        box_level_samples(hand_images(), NODULE, negatives_per_positive=0)
    with pytest.raises(LesionError, match="placement"):
        box_level_samples(hand_images(), NODULE, placement="uniform")  # type: ignore[arg-type]


def test_box_level_strata_are_size_matched() -> None:
    samples = box_level_samples(hand_images(), NODULE, seed=5)
    strata = box_level_strata(samples)
    assert set(strata["split"]) == {"test"}
    positives = strata[strata["label"] == 1]
    # Test nodule box areas 100, 100, 900, 900, 1600: median 900, ties small.
    assert list(positives["area"]) == [100.0, 100.0, 900.0, 900.0, 1600.0]
    assert list(positives["stratum"]) == ["small", "small", "small", "small", "large"]
    for index, row in strata[strata["label"] == 0].iterrows():
        source = samples[samples[index].source_box]
        assert row["stratum"] == strata.at[samples[index].source_box, "stratum"]
        assert row["area"] == source.box.area
    assert (strata["stratum"] == "large").sum() == 3  # one positive and its two negatives
    # Scores aligned by the frame's index reach stratum_auc directly.
    scores = np.where(strata["label"] == 1, strata["area"], 0.0)
    result = stratum_auc(strata["label"], scores, strata["stratum"])
    assert result == {"small": 1.0, "large": 1.0, "gap": 0.0}
