"""Progress reaches the right place: a file the runner shows in its terminal, one summary line in the notebook."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from lesionsignal.core.progress import (
    PROGRESS_FILE_VARIABLE,
    FileProgress,
    ProgressEcho,
    ProgressLine,
    progress_bar,
)


def test_a_line_round_trips_and_a_half_written_line_is_not_read() -> None:
    line = ProgressLine("demo-vit / demo\tx", 3, 10, "img")
    decoded = ProgressLine.decode(line.encode())
    assert decoded == ProgressLine("demo-vit / demo x", 3, 10, "img")
    assert ProgressLine.decode(line.encode()[:-1]) is None  # no newline yet: the writer is half-way
    assert ProgressLine.decode("garbage\n") is None


def test_under_the_runner_bars_go_to_the_file_and_the_notebook_gets_one_summary_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    channel = tmp_path / "progress.txt"
    monkeypatch.setenv(PROGRESS_FILE_VARIABLE, str(channel))
    bar = progress_bar(5, "probes", "probe")
    assert isinstance(bar, FileProgress)
    for _ in range(5):
        bar.update(1)
    bar.close()
    bar.close()  # closing twice reports once
    states = [ProgressLine.decode(line + "\n") for line in channel.read_text().splitlines()]
    assert states[0] == ProgressLine("probes", 0, 5, "probe") and states[-1] == ProgressLine("probes", 5, 5, "probe")
    shown = capsys.readouterr()
    assert shown.err == ""
    assert len(shown.out.splitlines()) == 1 and shown.out.startswith("probes: 5/5 probe in ")


def test_nothing_to_do_or_disabled_is_silent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PROGRESS_FILE_VARIABLE, str(tmp_path / "p.txt"))
    for bar in (progress_bar(0, "x", "u"), progress_bar(3, "x", "u", enabled=False)):
        bar.update(1)
        bar.close()
    assert not (tmp_path / "p.txt").exists()


class _Log(io.StringIO):
    def isatty(self) -> bool:
        return False


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _write(path: Path, *lines: ProgressLine) -> None:
    with path.open("a") as handle:
        for line in lines:
            handle.write(line.encode())


def test_in_a_log_each_finished_bar_is_one_line(tmp_path: Path) -> None:
    channel = tmp_path / "p.txt"
    log = _Log()
    with ProgressEcho(channel, "[demo] 02: ", stream=log, interval_s=0.01):
        _write(channel, ProgressLine("a", 1, 2, "img"), ProgressLine("a", 2, 2, "img"), ProgressLine("a", 2, 2, "img"))
        _write(channel, ProgressLine("b", 0, 3, "img"))
    assert log.getvalue() == "[demo] 02: a: 2/2 img\n"


def test_on_a_terminal_the_bar_is_one_updating_line_cleared_at_the_end(tmp_path: Path) -> None:
    channel = tmp_path / "p.txt"
    terminal = _Terminal()
    with ProgressEcho(channel, "[demo] 02: ", stream=terminal, interval_s=0.01):
        _write(channel, ProgressLine("a", 1, 2, "img"))
    text = terminal.getvalue()
    assert "\n" not in text and "[demo] 02: a: 1/2 img" in text and text.endswith("\r\033[K")
