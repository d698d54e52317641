"""Every path of a run, defined once.

Content-addressed caches (the demo cohort, the prepared CT, extraction units, probe results) live under
``paths.cache`` and are shared by every run that points there; a run's stage outputs live under
``paths.work/runs/<run name>/<stage>/``; its
tables, figures and executed notebooks under ``tables/<run name>/``, ``figures/<run name>/`` and
``reports/<run name>/``. Relative paths in the parameters are taken against the project root.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lesionsignal.config.params import Params, resolve
from lesionsignal.paper.outputs import Outputs


@dataclass(frozen=True)
class Catalog:
    params: Params
    root: Path  # the project root: relative paths of the parameters start here

    def _resolved(self, path: Path) -> Path:
        return resolve(path, self.root)

    @property
    def data_cache(self) -> Path:
        """The registry packages' images, fetched by ``make data``."""
        return self._resolved(self.params.paths.data_cache)

    @property
    def cache(self) -> Path:
        """Content-addressed caches: keyed by their inputs and code, so any run may share them."""
        return self._resolved(self.params.paths.cache)

    @property
    def cohorts(self) -> Path:
        """Rendered demo cohorts (one folder per generator digest) and the prepared CT they share."""
        return self.cache / "cohorts"

    @property
    def units(self) -> Path:
        """Extraction units of every feature source (``features.extraction.unit_store``)."""
        return self.cache / "units"

    @property
    def depth_units(self) -> Path:
        """Depth units: a subset read at every block, token grids kept (``features.depth_units``)."""
        return self.cache / "depth"

    @property
    def canvases(self) -> Path:
        """Decoded canvases of every cohort's images (``data.canvas_store``), shared by runs and shards."""
        return self.cache / "canvases"

    @property
    def probe_results(self) -> Path:
        """Detection-probe results per embedding file (``analysis.detection.probe_store``)."""
        return self.cache / "probes" / "detection"

    @property
    def finetune_results(self) -> Path:
        """Fine-tuned CNN results per cell (``analysis.finetune.finetune_store``)."""
        return self.cache / "probes" / "finetune"

    def stage(self, name: str) -> Path:
        """The outputs of one stage of this run."""
        return self._resolved(self.params.paths.work) / "runs" / self.params.name / name

    @property
    def tables(self) -> Path:
        return self._resolved(self.params.paths.tables) / self.params.name

    @property
    def figures(self) -> Path:
        return self._resolved(self.params.paths.figures) / self.params.name

    @property
    def reports(self) -> Path:
        """Executed notebooks, their HTML, the index page, logs and stamps."""
        return self._resolved(self.params.paths.reports) / self.params.name

    def outputs(self, notebook: str) -> Outputs:
        """Where one notebook writes its tables and figures, labelled with what the run is."""
        return Outputs(
            label=self.params.label,
            notebook=notebook,
            tables_dir=self.tables,
            figures_dir=self.figures,
            reports_dir=self.reports,
            root=self.root,
            params_source=self.params.source,
            dpi=self.params.figures.dpi,
        )
