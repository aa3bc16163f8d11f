"""Calibrations a batch needs once: bias, flat (normalised), arc and its warp model."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core._warnings import warnings_at_caller
from ..core.flat import FLAT_NORMS, FlatNoise, normalise_flat, usable_flat
from ..core.frames import FrameArray, binning_text, median_frames
from ..core.lines import find_cal_lines
from ..core.warp import PoorWarpWarning, WarpModel, generate_warp_model
from ..io.instruments import resolve_instrument
from ..io.loading import _metadata, matching_files, noise_of_frames, read_frame

__all__ = ["ARC_COMBINES", "FLAT_NORMS", "Calibrations", "normalise_flat", "prepare_calibrations"]

#: How the arc frames can be combined: summed (every lamp's lines kept) or median-combined.
ARC_COMBINES = ("sum", "median")


def _median_of(paths, reader, crop, what):
    """Median of the frames in ``paths`` (electrons when the gain is known), their unit and metadata."""
    return _combine_of(paths, reader, crop, what, "median")


def _combine_of(paths, reader, crop, what, how, bias=None):
    """Median or sum of the frames in ``paths``, each minus ``bias`` when given, their unit and their
    metadata (one dict per frame, as the loaders give it).

    Summing keeps lines that appear in one frame only (arcs of different
    lamps), which a median of three or more frames throws away.
    """
    if how not in ARC_COMBINES:
        raise ValueError(f"unknown combination {how!r} for the {what} frames; choose one of {', '.join(ARC_COMBINES)}")
    stack, units, metadata = None, set(), []
    for i, path in enumerate(paths):
        image = read_frame(path, reader, crop)
        units.add(image.unit)
        metadata.append(_metadata(path, image))
        if stack is None:
            stack = np.empty((len(paths), *image.shape))
        elif image.shape != stack.shape[1:]:
            raise ValueError(
                f"{what} frame {path.name} has shape {image.shape} after trimming and cropping; "
                f"the first has {stack.shape[1:]}: a different binning"
                + (f" ({binning_text(image.header)} in this file)" if binning_text(image.header) else "")
                + " or trim section?"
            )
        stack[i] = image
    if len(units) > 1:
        raise ValueError(f"some {what} frames have a gain and some do not; pass gain=... to set one for all")
    if bias is not None:
        _check_shape(stack[0], bias, what, "bias")
        stack -= bias
    if how == "sum":
        return stack.sum(axis=0), units.pop(), metadata
    return np.median(stack, axis=0, overwrite_input=True), units.pop(), metadata


@dataclass
class Calibrations:
    """What the driver prepares once: bias, normalised flat, arc and warp model."""

    bias: np.ndarray | None
    flat: np.ndarray | None
    arc: np.ndarray | None
    #: None when there is no arc: each science frame's warp is then fit on its own sky lines.
    warp_model: WarpModel | None
    guesses: np.ndarray | None
    #: The unit the science frames must be in: the bias's and flat's (None with neither: an arc's unit binds
    #: nothing, its lines give the geometry alone).
    unit: str | None
    files: dict
    #: The flat's own noise (None without flats): batch adds it to each output's VAR.
    flat_noise: FlatNoise | None = None


def prepare_calibrations(
    arc=(),
    *,
    bias=(),
    flat=(),
    instrument="generic",
    instrument_options=None,
    crop=None,
    guesses=None,
    warp_model=None,
    flat_norm="pixel",
    std_variation=50.0,
    line_order=2,
    warp_order=1,
    arc_combine="sum",
    tolerance=16.0,
) -> Calibrations:
    """Read the calibration frames and fit the warp model (the batch runner's first step).

    Bias: median of the bias frames. Flat: median of the flats minus the
    bias, normalised (see :func:`normalise_flat`). Arc: the arcs, each minus
    the bias, summed (``arc_combine="sum"``, the default: arcs of different
    lamps each keep their lines) or median-combined (``"median"``); the warp
    model is fit on it with ``guesses`` (default:
    :func:`~specwidgets.core.lines.find_cal_lines` at ``std_variation``), unless
    a ``warp_model`` (a WarpModel or its ``to_dict()``) is given.
    """
    reader = resolve_instrument(instrument, **(instrument_options or {}))
    arc_files = _expand(arc, "arc")
    bias_files = _expand(bias, "bias")
    flat_files = _expand(flat, "flat")
    units = set()
    bias_img = None
    if bias_files:
        bias_img, unit, bias_meta = _median_of(bias_files, reader, crop, "bias")
        # With its noise model: subtracting it adds its read noise to each exposure's (FrameArray arithmetic).
        bias_img = FrameArray(bias_img, **noise_of_frames(bias_meta, getattr(reader, "name", "reader"), mode="median"))
        units.add(unit)
    arc_img = None
    if arc_files:
        arc_img, unit, _ = _combine_of(arc_files, reader, crop, "arc", arc_combine, bias=bias_img)
        units.add(unit)
    flat_img = flat_noise = None
    if flat_files:
        raw_flat, unit, _ = _median_of(flat_files, reader, crop, "flat")
        units.add(unit)
        if bias_img is not None:
            _check_shape(raw_flat, bias_img, "flat", "bias")
            raw_flat -= bias_img
        flat_img = usable_flat(raw_flat, flat_norm, flat_files, "check --flat, or leave it out")
        flat_noise = FlatNoise(np.asarray(raw_flat, dtype=float), median_frames(len(flat_files)), flat_img)
    if len(units) > 1:
        raise ValueError(f"the calibration frames are in different units ({', '.join(sorted(units))}: some have no "
                         "gain, or are rates); pass gain=... to set one")
    binding = units if bias_files or flat_files else set()
    if warp_model is None and arc_img is None:
        # No arc: each science frame's warp comes from its own sky lines
        # (fit_sky with warp_model=None); nothing to fit here.
        pass
    elif warp_model is None:
        # Their warnings (a saturated line, a guess off the image) are the
        # user's to act on: shown at the user's call, not at a line in here;
        # a poor model's reasons are in the run's summary ("warp model warning").
        with warnings_at_caller(skip=(PoorWarpWarning,)):
            try:
                if guesses is None:
                    guesses, _ = find_cal_lines(arc_img, std_variation=std_variation)
                guesses = np.atleast_1d(np.asarray(guesses, float))
                warp_model = generate_warp_model(arc_img, guesses, tolerance=tolerance, line_order=line_order,
                                                 warp_order=warp_order)
            except ValueError as exc:
                # The core names its own arguments (std_variation); here they are options, and an
                # unusable arc has a way out that works: the sky lines' own warp (trial K2: a weak
                # arc and a saturated one stopped the run, where without --arc the skies were fine).
                text = str(exc).replace("lower std_variation", "lower --std-variation (std_variation= in run_batch)")
                raise ValueError(
                    f"{text}; or leave out the arc frames (no --arc): each science frame's warp is then fit on "
                    "its own sky lines"
                ) from exc
    elif isinstance(warp_model, dict):
        warp_model = WarpModel.from_dict(warp_model)
    elif not isinstance(warp_model, WarpModel):
        raise TypeError(f"warp_model must be a WarpModel or its to_dict(); got {type(warp_model).__name__}")
    for name, img in (("bias", bias_img), ("flat", flat_img), ("arc", arc_img)):
        if img is not None and warp_model is not None and img.shape != tuple(warp_model.shape):
            raise ValueError(
                f"the {name} frames have shape {img.shape} but the warp model is for {tuple(warp_model.shape)}"
            )
    return Calibrations(
        bias=bias_img,
        flat=flat_img,
        arc=arc_img,
        warp_model=warp_model,
        guesses=None if guesses is None else np.asarray(guesses, float),
        unit=binding.pop() if binding else None,
        files={"bias": bias_files, "flat": flat_files, "arc": arc_files},
        flat_noise=flat_noise,
    )


def _check_shape(a, b, name_a, name_b):
    if a.shape != b.shape:
        raise ValueError(f"the {name_a} frames have shape {a.shape} but the {name_b} frames {b.shape}"
                         + _shape_hint(a.shape, b.shape))


def _shape_hint(a, b):
    """Why two frame shapes may differ: whole-number ratios on both axes look like another binning.

    >>> _shape_hint((80, 750), (160, 1500))
    ': binned 2 x 2 against each other (CCDSUM, BINNING): use calibrations taken with the same binning'
    >>> _shape_hint((100, 750), (160, 1500))
    ': a different trim section or crop?'
    """
    ratios = []
    for x, y in zip(a, b):
        big, small = max(x, y), min(x, y)
        ratios.append(big // small if small and big % small == 0 else None)
    if None not in ratios and max(ratios) > 1:
        return (f": binned {ratios[0]} x {ratios[1]} against each other (CCDSUM, BINNING): use calibrations taken "
                "with the same binning")
    return ": a different trim section or crop?"


def _expand(items, what, must_exist=True):
    """Paths from files, folders (their FITS files) and glob patterns, in order, without repeats.

    A pattern that matches nothing raises FileNotFoundError; so does a path
    that does not exist, unless ``must_exist`` is False (it is then kept, to
    fail on its own).
    """
    if items is None:
        return []
    if isinstance(items, (str, os.PathLike)):
        items = [items]
    out, seen = [], set()
    for item in items:
        text = os.fspath(item)
        path = Path(text).expanduser()
        if path.is_dir():
            found = matching_files(path)
        elif not path.exists() and glob.has_magic(text):
            found = [Path(p) for p in sorted(glob.glob(os.path.expanduser(text)))]
            if not found:
                # Even where a missing file may fail on its own (must_exist=False):
                # a pattern is no file, and reading it would only say "cannot read *.fitz".
                raise FileNotFoundError(f"no {what} file matches the pattern {text!r}")
        else:
            if must_exist and not path.is_file():
                raise FileNotFoundError(f"{what} file {text!r} does not exist")
            found = [path]
        for p in found:
            p = p.resolve()
            if p not in seen:
                seen.add(p)
                out.append(p)
    return out
