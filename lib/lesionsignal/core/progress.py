"""Progress of long work, reported the same way by every step (extraction, probes, training, rendering)."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def update(self, n: int = 1) -> object: ...

    def close(self) -> object: ...


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, description: str, unit: str, enabled: bool = True) -> Progress:
    """A bar over ``total`` items, or a silent stand-in when disabled or there is nothing to do."""
    if not enabled or total <= 0:
        return _Silent()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit=unit, smoothing=0.1)
