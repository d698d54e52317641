"""SFDI: the clipped geometric mean by hand, its bounds, errors, and the grouped table with dataset means."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from lesionsignal.analysis.sfdi import SfdiError, sfdi, sfdi_table
from lesionsignal.paper.registry import SFDI_PANEL as DEFAULT_PANEL

PANEL4 = ("C1", "C2", "L4", "L8")


def test_hand_computation_with_the_clip() -> None:
    aucs = {"C1": 0.4, "C2": 0.5, "L4": 0.8, "L8": 1.0, "S4": 0.1}  # S4 is outside the panel: ignored
    assert sfdi(aucs, PANEL4) == pytest.approx((0.5 * 0.5 * 0.8 * 1.0) ** 0.25, rel=1e-12)
    assert sfdi({"C1": 0.9, "C2": 0.6}, ("C1", "C2")) == pytest.approx(math.sqrt(0.54), rel=1e-12)


def test_bounds() -> None:
    assert sfdi(dict.fromkeys(DEFAULT_PANEL, 0.5), DEFAULT_PANEL) == pytest.approx(0.5, abs=1e-15)
    # below chance clips to chance
    assert sfdi(dict.fromkeys(DEFAULT_PANEL, 0.0), DEFAULT_PANEL) == pytest.approx(0.5, abs=1e-15)
    assert sfdi(dict.fromkeys(DEFAULT_PANEL, 1.0), DEFAULT_PANEL) == 1.0
    assert len(DEFAULT_PANEL) == 10


def test_errors() -> None:
    aucs = dict.fromkeys(DEFAULT_PANEL, 0.7)
    del aucs["L8"], aucs["ground_glass_64"]
    with pytest.raises(SfdiError, match=r"missing panel conditions \['L8', 'ground_glass_64'\]"):
        sfdi(aucs, DEFAULT_PANEL)
    with pytest.raises(SfdiError, match="C2"):
        sfdi({"C1": 0.7, "C2": 1.2}, ("C1", "C2"))
    with pytest.raises(SfdiError, match="C1"):
        sfdi({"C1": math.nan, "C2": 0.7}, ("C1", "C2"))
    with pytest.raises(SfdiError, match="more than once"):
        sfdi({"C1": 0.7}, ("C1", "C1"))
    with pytest.raises(SfdiError, match="empty"):
        sfdi({"C1": 0.7}, ())


def long_frame() -> pd.DataFrame:
    rows = []
    cells = {
        ("m1", "nih", "cls"): (0.5, 0.5, 0.5, 0.5),
        ("m1", "mimic", "cls"): (1.0, 1.0, 1.0, 1.0),
        ("m1", "nih", "local"): (0.4, 0.5, 0.8, 1.0),
        ("m1", "mimic", "local"): (0.8, 0.8, 0.8, 0.8),
        ("m2", "nih", "cls"): (0.9, 0.9, 0.9, 0.9),
    }
    for (model, dataset, pool), aucs in cells.items():
        for name, auc in zip(PANEL4, aucs, strict=True):
            rows.append({"model": model, "dataset": dataset, "pool": pool, "perturbation": name, "auc": auc})
    rows.append({"model": "m2", "dataset": "nih", "pool": "cls", "perturbation": "dir_blur", "auc": 0.99})
    return pd.DataFrame(rows)


def test_table_groups_and_dataset_means() -> None:
    table = sfdi_table(long_frame(), panel=PANEL4)
    assert list(table.columns) == ["model", "dataset", "pool", "sfdi", "n_conditions", "n_datasets"]
    keyed = {(r.model, r.dataset, r.pool): r for r in table.itertuples()}
    assert len(keyed) == len(table) == 5 + 3
    assert keyed["m1", "nih", "cls"].sfdi == pytest.approx(0.5)
    assert keyed["m1", "mimic", "cls"].sfdi == pytest.approx(1.0)
    assert keyed["m1", "mean", "cls"].sfdi == pytest.approx(0.75)
    assert keyed["m1", "mean", "cls"].n_datasets == 2
    local_nih = (0.5 * 0.5 * 0.8 * 1.0) ** 0.25
    assert keyed["m1", "nih", "local"].sfdi == pytest.approx(local_nih)
    assert keyed["m1", "mean", "local"].sfdi == pytest.approx((local_nih + 0.8) / 2)
    assert keyed["m2", "nih", "cls"].sfdi == pytest.approx(0.9)  # the non-panel condition is ignored
    assert keyed["m2", "mean", "cls"].n_datasets == 1
    assert set(table["n_conditions"]) == {4}
    # Mean row last within its (model, pool) group.
    assert list(table["dataset"][:3]) == ["mimic", "nih", "mean"]
    assert table.equals(sfdi_table(long_frame().sample(frac=1.0, random_state=0), panel=PANEL4))


def test_table_without_dataset_has_no_mean_rows() -> None:
    frame = long_frame()
    table = sfdi_table(frame[frame["dataset"] == "nih"], panel=PANEL4, by=("model", "pool"))
    assert len(table) == 3 and "dataset" not in table.columns


def test_table_errors() -> None:
    frame = long_frame()
    with pytest.raises(SfdiError, match=r"group \{'model': 'm1', 'dataset': 'nih', 'pool': 'cls'\}.*'L8'"):
        sfdi_table(frame.drop(index=3), panel=PANEL4)
    with pytest.raises(SfdiError, match="more than one AUC"):
        sfdi_table(pd.concat([frame, frame.iloc[[0]]]), panel=PANEL4)
    with pytest.raises(SfdiError, match=r"missing columns \['auc'\]"):
        sfdi_table(frame.drop(columns="auc"), panel=PANEL4)
    with pytest.raises(SfdiError, match="named 'mean'"):
        sfdi_table(frame.replace({"dataset": {"nih": "mean"}}), panel=PANEL4)
    with pytest.raises(SfdiError, match="grouping column"):
        sfdi_table(frame.assign(pool=None), panel=PANEL4)
