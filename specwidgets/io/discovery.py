"""Which files are FITS frames: one rule for the API loaders, the dashboard and batch.

A FITS file name ends in ``.fits``, ``.fit`` or ``.fts`` (any case),
optionally followed by one compression suffix: ``.gz`` or ``.bz2`` (the whole
file compressed; astropy decompresses it on reading) or ``.fz`` (fpack's
tile-compressed FITS, ``.fits.fz``). Hidden files (``.name``) are not frames.

Output names strip every FITS and compression suffix (:func:`fits_stem`), so
``night1_sci.fits.bz2`` gives ``night1_sci_sky.fits``, not
``night1_sci.fits_sky.fits``.

Examples
--------
>>> is_fits_name("night1_sci.fits.bz2"), is_fits_name("a.FTS"), is_fits_name("a.fz"), is_fits_name(".a.fits")
(True, True, False, False)
>>> fits_stem("night1_sci.fits.bz2"), fits_stem("0069_PKS.fits.fz"), fits_stem("frame.FIT")
('night1_sci', '0069_PKS', 'frame')
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["COMPRESSION_SUFFIXES", "FITS_SUFFIXES", "find_fits_files", "fits_stem", "is_fits_name", "stem_clashes"]

#: Name endings of FITS files (compared case-insensitively).
FITS_SUFFIXES = (".fits", ".fit", ".fts")

#: Compression suffixes that may follow a FITS ending (``.fz``: fpack).
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".fz")


def _strip_compression(lower):
    for suffix in COMPRESSION_SUFFIXES:
        if lower.endswith(suffix):
            return lower[: -len(suffix)]
    return lower


def is_fits_name(name):
    """True when the file name ``name`` (a str or path) names a FITS file under the package's rule.

    Examples
    --------
    >>> [is_fits_name(n) for n in ("x.fits", "x.fit.gz", "x.fits.fz", "x.txt", "x.fits.zip")]
    [True, True, True, False, False]
    """
    name = Path(os.fspath(name)).name
    if not name or name.startswith("."):
        return False
    return _strip_compression(name.lower()).endswith(FITS_SUFFIXES)


def fits_stem(name):
    """The file name without its FITS and compression suffixes (all of them).

    A name that is not a FITS name loses its last suffix only, as
    ``Path.stem`` does.

    Examples
    --------
    >>> fits_stem("dir/night1_sci.fits.bz2"), fits_stem("a.fits.fits.gz"), fits_stem("notes.txt")
    ('night1_sci', 'a', 'notes')
    """
    name = Path(os.fspath(name)).name
    if not is_fits_name(name):
        return Path(name).stem or name
    stem = name
    endings = FITS_SUFFIXES + COMPRESSION_SUFFIXES
    while True:
        lower = stem.lower()
        ending = next((e for e in endings if lower.endswith(e) and len(stem) > len(e)), None)
        if ending is None:
            return stem
        stem = stem[: -len(ending)]


def stem_clashes(paths, same_folder=False):
    """The paths that share a :func:`fits_stem`, by stem: ``{stem: [paths]}`` for each stem of more than one
    (with ``same_folder``, by folder and stem: ``{(folder, stem): [paths]}``).

    Such files are one exposure stored twice (``x.fits`` and a compressed
    copy ``x.fits.gz`` left beside it) or, from different folders, frames
    whose outputs (named by the stem) would overwrite each other: the API
    loaders and batch refuse them by this one rule.

    Examples
    --------
    >>> stem_clashes(["a/x.fits", "a/x.fits.gz", "a/y.fits"])
    {'x': ['a/x.fits', 'a/x.fits.gz']}
    """
    by_stem = {}
    for path in paths:
        key = (Path(os.fspath(path)).parent, fits_stem(path)) if same_folder else fits_stem(path)
        by_stem.setdefault(key, []).append(path)
    return {stem: group for stem, group in by_stem.items() if len(group) > 1}


def find_fits_files(folder, tag="", *, ignore=(), depth=0, match="name", resolve=False):
    """The FITS files in ``folder`` (and subfolders down to ``depth``) selected by ``tag`` and ``ignore``.

    Parameters
    ----------
    folder : str or os.PathLike
        An existing folder.
    tag : str
        Keep files whose name (``match="name"``) or path relative to
        ``folder`` (``match="path"``, with ``/`` separators) contains this
        text, case-sensitively; ``""`` keeps every FITS file.
    ignore : iterable of str
        Drop files whose name or relative path contains any of these.
    depth : int
        How many levels of subfolders to look into (0: ``folder`` alone).
        Hidden subfolders are skipped.
    match : {"name", "path"}
        What ``tag`` and ``ignore`` are compared with.
    resolve : bool
        Return real paths (symlinks resolved) instead of paths under ``folder``.

    Returns
    -------
    list of pathlib.Path
        Sorted by the path relative to ``folder``; each real file once, even
        when symlinks (a subfolder linking back to its parent, two links to
        one frame) reach it several times. Every folder is listed at most
        once, so the cost is linear in the number of entries.

    Examples
    --------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> for name in ("b_sci.fits.bz2", "a_arc.fits", "notes.txt"):
    ...     _ = (root / name).write_bytes(b"")
    >>> [p.name for p in find_fits_files(root)]
    ['a_arc.fits', 'b_sci.fits.bz2']
    >>> [p.name for p in find_fits_files(root, "sci")]
    ['b_sci.fits.bz2']
    """
    if match not in ("name", "path"):
        raise ValueError(f"match must be 'name' or 'path'; got {match!r}")
    if not isinstance(tag, str):
        raise TypeError(f"tag must be a string; got {tag!r}")
    ignore = [ignore] if isinstance(ignore, str) else [s for s in ignore if s]
    root = Path(folder).expanduser()
    found = []  # (relative path, path)
    seen_dirs = set()
    pending = [(root, "", 0)]
    while pending:
        directory, prefix, level = pending.pop()
        real_dir = os.path.realpath(directory)
        if real_dir in seen_dirs:
            continue  # a symlink back to a folder already listed
        seen_dirs.add(real_dir)
        try:
            entries = list(os.scandir(directory))
        except (PermissionError, NotADirectoryError, FileNotFoundError):
            if level == 0:
                raise
            continue  # an unreadable subfolder holds no frames we can read
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                continue
            try:
                if entry.is_dir():
                    if level < depth:
                        pending.append((Path(entry.path), f"{prefix}{name}/", level + 1))
                    continue
                is_file = entry.is_file()
            except OSError:
                continue  # a dangling or looping symlink
            if is_file and is_fits_name(name):
                found.append((prefix + name, Path(entry.path)))
    found.sort(key=lambda item: item[0])
    chosen, seen_files = [], set()
    for relative, path in found:
        key = relative if match == "path" else path.name
        if tag not in key or any(s in key for s in ignore):
            continue
        real = os.path.realpath(path)
        if real in seen_files:
            continue
        seen_files.add(real)
        chosen.append(Path(real) if resolve else path)
    return chosen


def find_frames(folder, tag):
    """FITS files in ``folder`` and its subfolders (one level down) whose path contains ``tag``.

    The tag is matched, case-sensitively, against the path relative to the
    folder, so ``"bias"`` selects ``bias_001.fits`` and every file in a
    ``bias/`` subfolder, and ``"lamp/"`` only the latter. FITS names follow
    :func:`is_fits_name` (compressed ``.fits.bz2``,
    ``.fits.gz`` and ``.fits.fz`` included).

    Returns
    -------
    list of pathlib.Path
        Sorted by relative path; each real file once.
    """
    return find_fits_files(Path(folder).expanduser(), tag, depth=1, match="path")
