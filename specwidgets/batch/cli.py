"""``specwidgets batch``: the command line over :func:`specwidgets.batch.run_batch`."""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
import warnings

from ..core.frames import ESTIMATE
from ..core.inputs import check_spatial_order
from ..core.rows import RowRanges
from ..core.sky.api import METHODS
from .calibrations import ARC_COMBINES, FLAT_NORMS, _expand
from .runner import BatchLockedError, run_batch

__all__ = ["add_batch_parser", "join_range_values", "main", "run_batch_command"]

# A value such as "-5:20" starts with "-", so argparse takes it for an option and answers "expected one
# argument"; joined to its option ("--mask=-5:20") it reaches _ranges_arg, which names what is wrong.
_RANGE_OPTIONS = ("--mask", "--crop")
_RANGE_LIKE = re.compile(r"^-[0-9]*:")


# ------------------------------------------------------------------ command line
def _ranges_arg(text, option="--mask"):
    """``--mask``: row ranges as text (``20:100`` or ``20:100,104:113``), a :class:`RowRanges`."""
    try:
        ranges = RowRanges.parse(text, option)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected START:STOP (integers, e.g. 680:800): {exc}") from None
    if not ranges:
        raise argparse.ArgumentTypeError(f"expected START:STOP (integers, e.g. 680:800); got {text!r}")
    return ranges


def _range_arg(text):
    """``--crop``: one row range ``START:STOP``, as a pair."""
    ranges = _ranges_arg(text, "--crop")
    if len(ranges) != 1:
        raise argparse.ArgumentTypeError(f"expected one START:STOP range; got {text!r}")
    return ranges[0]


def _guesses_arg(text):
    try:
        values = [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated columns, e.g. 120.5,833,1410; got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("no guesses given")
    return values


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}")
    return value


def _positive_or_zero(text):
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer; got {text!r}")
    return value


def _number_or_estimate(what):
    """An argparse type: a number, or "estimate" (from the data even when the headers give one)."""
    def parse(text):
        if text.strip().lower() == ESTIMATE:
            return ESTIMATE
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what} or 'estimate'; got {text!r}") from None
    return parse


#: ``--read-noise``: electrons, or "estimate" (as ``run_batch(read_noise="estimate")``).
_read_noise_arg = _number_or_estimate("a read noise in electrons")
#: ``--gain``: e-/ADU, or "estimate" (the headers' gain not applied: the frames stay in their units and the
#: sky fit estimates the gain).
_gain_arg = _number_or_estimate("a gain in e-/ADU")


def _spatial_order_arg(text):
    try:
        return check_spatial_order(text)
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_batch_parser(subparsers):
    """Add the ``batch`` subcommand to an argparse subparsers object (``func=run_batch_command``)."""
    p = subparsers.add_parser(
        "batch",
        help="subtract the sky from many exposures (Dask), one FITS file each",
        description=(
            "Fit the warp model once on the arcs (without --arc: each frame's on its own sky lines), then "
            "subtract the sky from every SCIENCE exposure on Dask workers, writing OUT/<stem>_sky.fits (SCI, "
            "SKY, VAR, MASK). Re-running the same command resumes: complete outputs are skipped. Put the "
            "SCIENCE files first."
        ),
    )
    p.add_argument("science", nargs="*", metavar="SCIENCE",
                   help="science FITS files or folders (with --settings naming a folder: default its science files)")
    p.add_argument(
        "--settings", default=None, metavar="FILE",
        help="a session saved by the dashboard: its masks, guesses, warp and sky options, noise model, "
             "instrument, crop and data folder; options given here win",
    )
    p.add_argument(
        "--data-root", default=None, metavar="DIR",
        help="where a session's folder, saved relative to the page's data root, lies (default: here)",
    )
    p.add_argument("--arc", nargs="+", action="extend", default=[], metavar="ARC",
                   help="arc-lamp frames (summed; see --arc-combine; repeatable; default: the session folder's; "
                        "none: each science frame's warp is fit on its own sky lines)")
    p.add_argument(
        "--arc-combine", choices=ARC_COMBINES, default=None,
        help="combine the arcs by sum (default: arcs of different lamps keep every line) or median",
    )
    # Repeatable (--arc HgAr.fits --arc Ne.fits): each adds its files, as --mask adds ranges.
    p.add_argument("--bias", nargs="+", action="extend", default=[], metavar="BIAS",
                   help="bias frames (median-combined; repeatable)")
    p.add_argument("--flat", nargs="+", action="extend", default=[], metavar="FLAT",
                   help="flat frames (median-combined, normalised; repeatable)")
    p.add_argument("--instrument", default=None, help="instrument recipe (default: the session's, else generic)")
    p.add_argument(
        "--trimsec", default=None, metavar="SECTION",
        help="FITS section [x1:x2,y1:y2] of each raw frame to keep (an instrument without its own rule: "
             "overscan out); 'all' keeps every pixel; default: the instrument's rule (generic: the header's "
             "TRIMSEC when smaller than the frame)",
    )
    p.add_argument(
        "--dispersion-axis", type=int, choices=(0, 1), default=None, metavar="0|1",
        help="1: dispersion along the stored columns (x), as specwidgets wants; 0: along the rows (the frames "
             "are transposed); default: the instrument's rule (generic: a DISPAXIS card, else the arc's lines "
             "tell)",
    )
    p.add_argument(
        "--bad-pixels", default=None, metavar="EXTNAME|FILE",
        help="pixels of each science frame left out of its sky fit: the EXTNAME of each file's data-quality image "
             "(DQ, BPM; nonzero is bad) or a FITS mask file for every frame (the stored or the read frame's shape)",
    )
    p.add_argument("--crop", type=_range_arg, default=None, metavar="START:STOP", help="rows kept of each frame")
    p.add_argument(
        "--mask", type=_ranges_arg, action="append", default=None, metavar="START:STOP",
        help="rows excluded from the sky fit (repeatable; required unless --settings gives them)",
    )
    p.add_argument("--guesses", type=_guesses_arg, default=None, metavar="X,X,...", help="arc-line columns (default: found)")
    p.add_argument("--method", choices=METHODS, default=None, help="sky method (default: bspline)")
    p.add_argument(
        "--spatial-order", type=_spatial_order_arg, default=None, metavar="N|auto",
        help="B-spline sky: order along the slit, 0..4 (default auto: the sky fit chooses)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", type=_positive_int, default=None, metavar="N", help="local worker processes")
    where.add_argument("--scheduler", default=None, metavar="ADDRESS", help="use a running Dask scheduler")
    p.add_argument("--overwrite", action="store_true", help="redo outputs that are already complete")
    p.add_argument(
        "--fit-together", action="store_true",
        help="fit the science files as one stack, as the page fits its exposures (the exposures of one target; "
             "default: each file on its own, or the session's exposures together with --settings)",
    )
    p.add_argument(
        "--read-noise", type=_read_noise_arg, default=None, metavar="E",
        help="read noise (e-; default from the headers, else estimated from the data; 'estimate': from the data "
             "even when the headers give one)",
    )
    p.add_argument(
        "--gain", type=_gain_arg, default=None, metavar="G",
        help="gain (e-/ADU; frames are converted to electrons; default from the headers/instrument; 'estimate': "
             "the headers' gain not applied, estimated from the data)",
    )
    p.add_argument(
        "--fail-on-suspect", action="store_true",
        help="exit 3 when no exposure failed but some fit is suspect (default: exit 0, suspect ones counted)",
    )
    p.add_argument("--std-variation", type=float, default=None, help="arc-line detection threshold (default 50)")
    p.add_argument("--tolerance", type=float, default=None, help="warp fit: line tracing tolerance (default 16)")
    p.add_argument("--warp-order", type=_positive_or_zero, default=None,
                   help="warp fit: polynomial order, along the dispersion (in column), of how the lines' shape "
                        "changes across the frame (default 1)")
    p.add_argument("--line-order", type=_positive_or_zero, default=None,
                   help="warp fit: polynomial order of each line's column as a function of row, i.e. its curvature "
                        "along the slit (default 2)")
    p.add_argument("--flat-norm", choices=FLAT_NORMS, default="pixel",
                   help="flat normalisation: pixel (default; the pixel-to-pixel response only, the sky fit models the "
                        "slit's illumination), column (keeps the lamp's illumination of the slit) or global")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="output image type")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_batch_command)
    return p


def run_batch_command(args):
    """Run ``specwidgets batch`` from parsed arguments; return the exit code.

    0: every exposure done or already complete (suspect fits included: they
    are counted and named in the summary); 1: some failed (named in the
    summary); 2: bad arguments or calibrations, nothing run; 3: with
    ``--fail-on-suspect``, nothing failed but some fit is suspect;
    130: interrupted.
    """
    with _plain_warnings():
        return _run_command(args)


@contextlib.contextmanager
def _plain_warnings():
    """Show warnings as ``warning: <message>`` while the command runs, each message once (the same
    section card read from every file, by the driver and the workers, is one warning); the previous
    display after."""
    previous, shown = warnings.showwarning, set()

    def show(message, category, filename, lineno, file=None, line=None):
        if str(message) not in shown:
            shown.add(str(message))
            print(f"warning: {message}", file=sys.stderr if file is None else file)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous


def _check_paths(args):
    """The first file argument naming nothing (a path that does not exist, a pattern matching no file), or "".

    run_batch lets a missing science file fail on its own, as one of the
    exposures; on the command line it is a typo, refused before anything runs.
    """
    for what, items in (("science", args.science), ("arc", args.arc), ("bias", args.bias), ("flat", args.flat)):
        try:
            _expand(items, what)
        except FileNotFoundError as exc:
            return str(exc)
    return ""


def _run_command(args):
    # "estimate": no gain applied to the frames (None), so the sky fit estimates it.
    instrument_options = {} if args.gain is None else {"gain": None if args.gain == ESTIMATE else args.gain}
    if args.trimsec is not None:
        instrument_options["trimsec"] = None if args.trimsec.strip().lower() == "all" else args.trimsec
    if args.dispersion_axis is not None:
        instrument_options["dispersion_axis"] = args.dispersion_axis
    settings = getattr(args, "settings", None)
    # Without --arc the warp is fit on each science frame's sky lines (run_batch says so).
    if settings is None and (not args.science or not args.mask):
        missing = [f for f, v in (("SCIENCE files", args.science), ("--mask", args.mask)) if not v]
        print(f"specwidgets batch: error: give {', '.join(missing)} (or --settings FILE from the dashboard)",
              file=sys.stderr)
        return 2
    problem = _check_paths(args)
    if problem:
        print(f"specwidgets batch: error: {problem}", file=sys.stderr)
        return 2
    try:
        summary = run_batch(
            args.science,
            args.arc,
            out_dir=args.out,
            bias=args.bias,
            flat=args.flat,
            settings=settings,
            data_root=getattr(args, "data_root", None),
            instrument=args.instrument,
            instrument_options=instrument_options,
            bad_pixels=getattr(args, "bad_pixels", None),
            crop=args.crop,
            masks=None if args.mask is None else RowRanges([pair for ranges in args.mask for pair in ranges]),
            guesses=args.guesses,
            method=args.method,
            spatial_order=args.spatial_order,
            read_noise=args.read_noise,
            arc_combine=getattr(args, "arc_combine", None),
            fail_on_suspect=getattr(args, "fail_on_suspect", False),
            fit_together=True if getattr(args, "fit_together", False) else None,
            std_variation=args.std_variation,
            tolerance=getattr(args, "tolerance", None),
            warp_order=getattr(args, "warp_order", None),
            line_order=getattr(args, "line_order", None),
            flat_norm=args.flat_norm,
            dtype=args.dtype,
            workers=args.workers,
            scheduler=args.scheduler,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            report=True,
        )
    except KeyboardInterrupt:
        print("specwidgets batch: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError, BatchLockedError) as exc:
        text = str(exc)
        # The core's advice names the Python option; on the command line it is a flag.
        text = text.replace("load with dispersion_axis=0", "load with dispersion_axis=0: --dispersion-axis 0")
        print(f"specwidgets batch: error: {text}", file=sys.stderr)
        return 2
    return summary.exit_code


def join_range_values(argv):
    """Join ``--mask -5:20`` into ``--mask=-5:20``, so a range that starts with ``-`` is parsed as a value.

    Examples
    --------
    >>> join_range_values(["batch", "a.fits", "--mask", "-5:20", "--crop", "10:90"])
    ['batch', 'a.fits', '--mask=-5:20', '--crop', '10:90']
    """
    out = []
    args = iter(argv)
    for arg in args:
        if arg == "--":  # what follows is positional
            out.append(arg)
            out.extend(args)
            break
        if arg in _RANGE_OPTIONS:
            value = next(args, None)
            if value is not None and _RANGE_LIKE.match(value):
                out.append(f"{arg}={value}")
                continue
            out.append(arg)
            if value is not None:
                out.append(value)
            continue
        out.append(arg)
    return out


def main(argv=None):
    """``python -m specwidgets.batch ...``: the ``batch`` subcommand on its own."""
    argv = join_range_values(list(sys.argv[1:] if argv is None else argv))
    if argv[:1] != ["batch"]:
        argv.insert(0, "batch")
    parser = argparse.ArgumentParser(prog="specwidgets")
    sub = parser.add_subparsers(dest="command", required=True)
    add_batch_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)
