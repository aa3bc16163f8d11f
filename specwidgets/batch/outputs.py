"""What a batch run reports: per-file quality records and the summary (done, skipped, failed, suspect)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..io.fits_output import (
    header_warnings,
    output_name,
    result_quality,
)

__all__ = ["BatchSummary"]


def _flags_of_output(path):
    """``suspect``/``warnings`` an earlier run wrote into an output's header (resume keeps the count)."""
    try:
        from astropy.io import fits

        header = fits.getheader(path)
    except (OSError, ValueError):
        return {"suspect": False, "warnings": []}
    return {"suspect": bool(header.get("SWSUSP", False)), "warnings": header_warnings(header)}


def _quality_record(result):
    """``suspect`` and ``warnings`` of a fit's quality, for the driver's summary (empty without one)."""
    quality = result_quality(result)
    if quality is None:
        return {"suspect": False, "warnings": []}
    return {"suspect": bool(getattr(quality, "suspect", False)), "warnings": [str(w) for w in getattr(quality, "warnings", [])]}


# ------------------------------------------------------------------ summary
@dataclass
class BatchSummary:
    """What a batch run did.

    Attributes
    ----------
    out_dir : pathlib.Path
    n_inputs : int
    done : list of str
        Inputs whose output was written by this run.
    skipped : list of str
        Inputs whose output was already complete (resume).
    failed : list of (str, str)
        ``(input, reason)`` of each input that failed.
    wall_time : float
        Seconds, start to end (calibrations and cluster start included).
    removed_temporary : int
        Temporary files of an interrupted run removed at the start.
    warp_model : dict
        The warp model used (``to_dict()``).
    warnings : list of str
        The warp model's quality warnings.
    notes : list of str
        What the run chose that is not a problem (no arc frames: each
        frame's warp from its own sky lines).
    timings : dict
        Where the wall time went (seconds): ``calibrations`` (reading them
        and fitting the warp model), ``cluster_start`` (starting the local
        cluster or connecting; 0 with ``client=``), ``first_result`` (from
        the first submit to the first finished task: the workers' imports
        and numba loads), ``tasks`` (first submit to last result),
        ``task_wall`` and ``task_cpu`` (sums over the tasks as the workers
        measured them), ``exposures_per_task``, ``worker_cpu`` (the worker processes' CPU time
        at the end, start-up and Dask's own work included) and
        ``cluster_stop``.
    suspect : list of (str, list of str)
        ``(input, warnings)`` of each output whose fit says it is probably
        wrong (``SkyResult.quality.suspect``; for a skipped output, its
        header's ``SWSUSP``); these inputs are in ``done`` or ``skipped`` too
        (their output exists, flagged in its header).
    fail_on_suspect : bool
        Make :attr:`exit_code` 3 when some output is suspect (and none failed).
    """

    out_dir: Path
    n_inputs: int = 0
    done: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    wall_time: float = 0.0
    removed_temporary: int = 0
    warp_model: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    suspect: list = field(default_factory=list)
    fail_on_suspect: bool = False
    timings: dict = field(default_factory=dict)

    @property
    def ok(self):
        return not self.failed

    @property
    def exit_code(self):
        """0 when nothing failed (suspect outputs included), 1 when some failed.

        With ``fail_on_suspect`` a run where nothing failed but some output
        is suspect gives 3.
        """
        if not self.ok:
            return 1
        return 3 if (self.fail_on_suspect and self.suspect) else 0

    def outputs(self):
        """Paths of the outputs of the inputs that did not fail."""
        return [self.out_dir / output_name(p) for p in [*self.done, *self.skipped]]

    def report(self, reasons=True):
        """The summary as text; ``reasons=False`` names the failed and suspect inputs without their reasons.

        (A run with ``report=True`` printed its notes and warnings at the
        start and each failure and suspect fit as it happened, so its closing
        summary counts the former and names the others only: each is printed once.)
        """
        lines = [
            f"specwidgets batch: {self.n_inputs} exposure(s) -> {self.out_dir}",
            f"  done {len(self.done)}, skipped (already complete) {len(self.skipped)}, failed {len(self.failed)}"
            f"; wall time {self.wall_time:.1f} s",
        ]
        if self.removed_temporary:
            lines.append(f"  removed {self.removed_temporary} temporary file(s) left by an interrupted run")
        if reasons:
            lines += [f"  note: {n}" for n in self.notes]
            lines += [f"  warp model warning: {w}" for w in self.warnings]
        elif self.notes or self.warnings:
            counts = [f"{len(self.notes)} note(s)"] * bool(self.notes)
            counts += [f"{len(self.warnings)} warp model warning(s)"] * bool(self.warnings)
            lines.append(f"  {' and '.join(counts)}: printed above")
        lines += self._suspect_lines(reasons)
        if self.failed and reasons:
            lines.append("  failed:")
            lines += [f"    {Path(p).name}: {msg}" for p, msg in self.failed]
        elif self.failed:
            names = [Path(p).name for p, _ in self.failed]
            more = f", ... ({len(names) - 10} more)" if len(names) > 10 else ""
            lines.append(f"  failed (reasons above): {', '.join(names[:10])}{more}")
        return "\n".join(lines)

    def _suspect_lines(self, reasons=True):
        """The suspect count, spelled out so "failed 0" never reads as "all good".

        ``reasons=False``: the exposures done in this run had their reasons
        printed as they finished, so they are named only (a skipped output's
        reasons, read from its header, are given: they were not printed).
        """
        if not (self.done or self.skipped):
            return []
        good = len(self.done) + len(self.skipped) - len(self.suspect)
        flagged = " (written, flagged SWSUSP in the header)" if self.suspect else ""
        lines = [f"  fits: good {good}, suspect {len(self.suspect)}{flagged}"]
        done = set(map(str, self.done))
        shown = [Path(p).name for p, _ in self.suspect if not reasons and str(p) in done]
        if shown:
            more = f", ... ({len(shown) - 10} more)" if len(shown) > 10 else ""
            lines.append(f"    suspect (reasons above): {', '.join(shown[:10])}{more}")
        for p, warnings in self.suspect:
            if reasons or str(p) not in done:
                lines.append(f"    suspect {Path(p).name}: " + ("; ".join(warnings) or "no reason given"))
        return lines

    def __str__(self):
        return self.report()
