"""Where the checked-in cohort fixtures are: tiny files in each cohort's published layout."""

from __future__ import annotations

from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "cohorts"
NIH = FIXTURES / "nih"
NIH_CSV = NIH / "Data_Entry_2017_v2020.csv"
NIH_DIRS = [NIH / "images_001" / "images", NIH / "images_002" / "images"]
NIH_LISTS = (NIH / "train_val_list.txt", NIH / "test_list.txt")
MIMIC = FIXTURES / "mimic"
INSTITUTIONAL = FIXTURES / "institutional"
DET = FIXTURES / "chestxdet10"
DET_DIRS = [DET / "train_data", DET / "test_data"]
# The institutional fixture's CSV columns: every role under a name of its own, as a hospital export would have them.
INSTITUTIONAL_COLUMNS = {
    "path": "image_path",
    "patient_id": "mrn",
    "split": "partition",
    "labels": {"cardiomegaly": "cardiomegaly_label", "edema": "edema_label", "lung_lesion": "lesion_label"},
    "view": "view_position",
}
