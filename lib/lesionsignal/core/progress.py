"""Progress of long work, reported the same way by every step (extraction, probes, training, rendering).

Where a bar goes depends on who is watching:
- a notebook executed by ``make paper`` (the runner sets ``$LESIONSIGNAL_PROGRESS_FILE``): updates go to that file,
  which the runner shows as one updating line in its terminal; the notebook itself gets one summary line per bar,
  so the executed reports carry no wall of bar updates;
- a notebook run by hand in JupyterLab: a text bar that updates in place in the cell's output;
- a terminal (``make stages``, a cluster job): a text bar on stderr.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TextIO

PROGRESS_FILE_VARIABLE = "LESIONSIGNAL_PROGRESS_FILE"
# The runner reads the file a few times a second; writing more often only costs the worker time.
FILE_INTERVAL_S = 0.5
FIELD_SEPARATOR = "\t"


class Progress(Protocol):
    def update(self, n: int = 1) -> object: ...

    def close(self) -> object: ...


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class ProgressLine:
    """One state of one bar, as written to a progress file."""

    description: str
    done: int
    total: int
    unit: str

    def encode(self) -> str:
        clean = self.description.replace(FIELD_SEPARATOR, " ").replace("\n", " ")
        return FIELD_SEPARATOR.join((clean, str(self.done), str(self.total), self.unit)) + "\n"

    @classmethod
    def decode(cls, line: str) -> ProgressLine | None:
        """None for a line that is not (yet) whole: the reader may catch a write half-way."""
        parts = line.rstrip("\n").split(FIELD_SEPARATOR)
        if len(parts) != 4 or not line.endswith("\n"):
            return None
        try:
            return cls(parts[0], int(parts[1]), int(parts[2]), parts[3])
        except ValueError:
            return None

    def text(self) -> str:
        return f"{self.description}: {self.done}/{self.total} {self.unit}"


class FileProgress:
    """Bar updates appended to a file that another process shows; a one-line summary printed when it closes."""

    def __init__(self, path: Path, total: int, description: str, unit: str) -> None:
        self._path = path
        self._line = ProgressLine(description, 0, total, unit)
        self._started = time.perf_counter()
        self._written = 0.0
        self._closed = False
        self._write()

    def update(self, n: int = 1) -> None:
        line = self._line
        self._line = ProgressLine(line.description, line.done + n, line.total, line.unit)
        if time.perf_counter() - self._written >= FILE_INTERVAL_S or self._line.done >= line.total:
            self._write()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._write()
        elapsed = time.perf_counter() - self._started
        print(f"{self._line.text()} in {elapsed:.1f} s", flush=True)

    def _write(self) -> None:
        self._written = time.perf_counter()
        with self._path.open("a", encoding="utf-8") as handle:
            handle.write(self._line.encode())


def in_notebook() -> bool:
    """True inside a Jupyter kernel, whose stdout is the kernel's stream to the notebook."""
    return type(sys.stdout).__module__.startswith("ipykernel")


def progress_bar(total: int, description: str, unit: str, enabled: bool = True) -> Progress:
    """A bar over ``total`` items, or a silent stand-in when disabled or there is nothing to do."""
    if not enabled or total <= 0:
        return _Silent()
    target = os.environ.get(PROGRESS_FILE_VARIABLE)
    if target:
        return FileProgress(Path(target), total, description, unit)
    # tqdm.std, never tqdm.auto: the widget bar needs ipywidgets and, without it, warns into every notebook.
    from tqdm.std import tqdm

    if in_notebook():
        return tqdm(total=total, desc=description, unit=unit, file=sys.stdout, ncols=100, mininterval=0.5)
    return tqdm(total=total, desc=description, unit=unit, smoothing=0.1)


class ProgressEcho:
    """Shows the bars another process appends to a progress file: one updating line on a terminal, one line per
    finished bar in a log (CI), so a long notebook run is never silent and never floods the log."""

    def __init__(self, path: Path, prefix: str, stream: TextIO | None = None, interval_s: float = 0.25) -> None:
        self._path = path
        self._prefix = prefix
        self._stream = stream or sys.stderr
        self._interval = interval_s
        self._offset = 0
        self._partial = ""
        self._shown = False
        self._finished: set[ProgressLine] = set()  # a finished bar's last state is written twice (update, close)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="progress-echo", daemon=True)

    def __enter__(self) -> ProgressEcho:
        self._path.touch()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._read()
        if self._shown:
            self._stream.write("\r\033[K")
            self._stream.flush()

    def _follow(self) -> None:
        while not self._stop.wait(self._interval):
            self._read()

    def _read(self) -> None:
        try:
            with self._path.open("r", encoding="utf-8") as handle:
                handle.seek(self._offset)
                chunk = handle.read()
                self._offset = handle.tell()
        except FileNotFoundError:
            return
        text = self._partial + chunk
        lines = text.split("\n")
        self._partial = lines.pop()
        states = [s for s in (ProgressLine.decode(line + "\n") for line in lines) if s is not None]
        if states:
            self._show(states)

    def _show(self, states: list[ProgressLine]) -> None:
        if self._stream.isatty():
            width = shutil.get_terminal_size().columns - 1
            self._stream.write("\r\033[K" + f"{self._prefix}{states[-1].text()}"[:width])
            self._shown = True
        else:
            for state in states:
                if state.done >= state.total and state not in self._finished:
                    self._finished.add(state)
                    self._stream.write(f"{self._prefix}{state.text()}\n")
        self._stream.flush()


@contextmanager
def widgetless_tqdm() -> Iterator[None]:
    """Around imports of libraries that pick ``tqdm.auto`` (transformers and open_clip through huggingface_hub, umap
    through pynndescent): in a kernel without ipywidgets, tqdm warns into the notebook once, at that import, about a
    widget no bar of this project uses."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="IProgress not found")
        yield
