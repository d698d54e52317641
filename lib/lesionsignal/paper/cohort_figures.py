"""Cohort overview: example films with their lesion boxes, and lesion-size distributions per class.

The sizes are compared with ChestX-Det10's published box counts (protocol section 1); its median areas were lost from
the paper's text, so only the counts and the class ordering are set beside ours.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from lesionsignal.core.canvas import load_canvas
from lesionsignal.data.manifest import Manifest

CLASS_COLOURS = {"Calcification": "gold", "Nodule": "limegreen", "Mass": "red"}

# protocol section 1: ChestX-Det10 boxes and images per class, train / test.
CHESTXDET10_COUNTS = pd.DataFrame(
    {
        "class": ["Calcification", "Nodule", "Mass"],
        "boxes_train": [280, 789, 129],
        "boxes_test": [67, 166, 31],
        "images_train": [163, 307, 112],
        "images_test": [38, 77, 30],
    }
)


def lesion_counts_vs_chestxdet10(manifest: Manifest, classes: Sequence[str]) -> pd.DataFrame:
    """Boxes and images per class and split in the manifest, beside ChestX-Det10's counts and class shares."""
    boxes = manifest.boxes_frame()
    reference = CHESTXDET10_COUNTS.set_index("class")
    total_ref = reference[["boxes_train", "boxes_test"]].to_numpy().sum()
    total_ours = int(boxes["label"].isin(classes).sum())
    rows = []
    for cls in classes:
        ours = boxes[boxes["label"] == cls]
        row: dict[str, object] = {"class": cls}
        for split in ("train", "test"):
            in_split = ours[ours["split"] == split]
            row[f"boxes_{split}"] = len(in_split)
            row[f"images_{split}"] = in_split["image_id"].nunique()
        row["share_of_boxes"] = round(len(ours) / total_ours, 3) if total_ours else float("nan")
        if cls in reference.index:
            ref = reference.loc[cls]
            row["chestxdet10_boxes_train"] = int(ref["boxes_train"])
            row["chestxdet10_boxes_test"] = int(ref["boxes_test"])
            row["chestxdet10_share_of_boxes"] = round(float(ref["boxes_train"] + ref["boxes_test"]) / total_ref, 3)
        rows.append(row)
    return pd.DataFrame(rows)


def plot_examples(manifest: Manifest, n: int, seed: int, title: str) -> object:
    """``n`` films drawn with ``default_rng(seed)``, preferring films with boxes, each with its boxes drawn."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    records = sorted(manifest.records, key=lambda r: (not r.boxes, r.image_id))
    with_boxes = [r for r in records if r.boxes]
    pool = with_boxes if len(with_boxes) >= n else records
    rng = np.random.default_rng(seed)
    chosen = [pool[i] for i in sorted(rng.choice(len(pool), size=min(n, len(pool)), replace=False))]
    cols = min(4, len(chosen))
    rows = int(np.ceil(len(chosen) / cols))
    # Constrained layout makes room for every two-line title; tight_layout let them slide under the film above.
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.4 * rows + 0.4), squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, record in zip(axes.flat, chosen, strict=False):
        ax.imshow(load_canvas(record.path), cmap="gray", vmin=0, vmax=255)
        for lesion in record.boxes:
            colour = CLASS_COLOURS.get(lesion.label, "deepskyblue")
            box = lesion.box
            ax.add_patch(Rectangle((box.x1, box.y1), box.width, box.height, fill=False, ec=colour, lw=1))
        labels = ", ".join(f"{name}" for name, value in record.labels if value and name not in CLASS_COLOURS)
        ax.set_title(f"{record.image_id}\n{record.split}; {labels or 'no disease label'}", fontsize=7)
    handles = [Rectangle((0, 0), 1, 1, fill=False, ec=c, label=k) for k, c in CLASS_COLOURS.items()]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    return fig


def plot_box_sizes(manifest: Manifest, classes: Sequence[str], title: str) -> object:
    """Histogram of box side (square root of the area, px on the 1024 canvas) per class, log scale."""
    import matplotlib.pyplot as plt

    boxes = manifest.boxes_frame()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), layout="constrained")
    bins = np.logspace(np.log10(4), np.log10(1024), 40)
    for cls in classes:
        sides = np.sqrt(boxes.loc[boxes["label"] == cls, "area"].to_numpy(dtype=float))
        if len(sides):
            label = f"{cls} (median {np.median(sides):.0f} px)"
            ax.hist(sides, bins=bins, alpha=0.55, color=CLASS_COLOURS.get(cls), label=label)
    for patch in (4, 8, 16, 32, 64):
        ax.axvline(patch, color="gray", lw=0.6, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("box side = sqrt(area), px on the 1024 canvas (dotted: perturbation patch sides)")
    ax.set_ylabel("boxes")
    # Under the axes: inside, the legend could cover the tallest bars.
    fig.legend(fontsize=8, loc="outside lower center", ncols=max(1, len(ax.get_legend_handles_labels()[0])))
    ax.set_title(title, fontsize=10)
    return fig
