"""The SOAR/Goodman long-slit sample: find it locally or download it.

The sample (14 fpack-compressed frames, about 22 MB) comes from the public
repository ``ranieremenezes/easyspec`` (BSD 3-Clause), commit
``1a8047bf0a618bd415b1a17b0d5dfec5caa03afd``, folder ``tutorial_data/``. Its
layout is kept as is::

    goodman/
        bias/                 5 bias frames
        flats/                3 lamp flats
        lamp/                 3 HgAr+Ne arc frames
        spec_PKSJ0049_5738/   2 science frames of PKS J0049-5738
        std_star/             1 standard star frame

:func:`goodman_path` looks, in order, at

1. the ``SPECWIDGETS_DATA_DIR`` environment variable: a folder holding
   ``goodman/``, or the goodman folder itself;
2. ``../shared/data/goodman`` from the current working directory, then from
   the repository root (the folder above the package);
3. the pooch cache (``pooch.os_cache("specwidgets")``, or the folder named by
   ``SPECWIDGETS_CACHE_DIR``), downloading what is missing from the base URL
   (``SPECWIDGETS_DATA_URL`` overrides it) and checking every file's SHA256.

Examples
--------
>>> from specwidgets.io.sample_data import goodman_available, load_goodman
>>> if goodman_available():  # doctest: +SKIP
...     sample = load_goodman()
...     sample.science.shape
(2, 120, 2030)
"""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from specwidgets.io.loading import average_matching_files, collect_images_array

__all__ = [
    "GOODMAN_BASE_URL",
    "GOODMAN_REGISTRY",
    "GoodmanSample",
    "fetch_goodman",
    "find_local_goodman",
    "goodman_available",
    "goodman_path",
    "load_goodman",
]

EASYSPEC_COMMIT = "1a8047bf0a618bd415b1a17b0d5dfec5caa03afd"

#: Where the files are downloaded from; ``<base>/<subpath>`` is each file.
GOODMAN_BASE_URL = f"https://raw.githubusercontent.com/ranieremenezes/easyspec/{EASYSPEC_COMMIT}/tutorial_data/"

#: Sub-path (same in the source repository and locally) -> SHA256 checksum.
GOODMAN_REGISTRY = {
    "bias/0056_BIAS_13-05-2023.fits.fz": "7bb391926760f137ed0f7bfd6bda2272349041a329d1deab93388f9161cc9371",
    "bias/0057_BIAS_13-05-2023.fits.fz": "c725af393913a8d89a6f7de64eaa251c86c838cca1febbf3abcd30f29e22ab16",
    "bias/0058_BIAS_13-05-2023.fits.fz": "6d4d23ff60c78fc8d3d8d6d7f705d7ed4a0777bd47dad8f25222642381c54897",
    "bias/0059_BIAS_13-05-2023.fits.fz": "f4f79c9ff36f64ca5e1cc8ed58df97cf434cf02059448caf0950330b7a5ce35b",
    "bias/0060_BIAS_13-05-2023.fits.fz": "9c979743b200543b1f7615f162628f823e79c2736eb0bbfe89c96a530fbe6c08",
    "flats/0064_PKSJ0049-5738_13-05-2023.fits.fz": "b1fa852bf8c5eb235b84cdc994d306f6407448c9c84f92c883001112ac8d063e",
    "flats/0065_PKSJ0049-5738_13-05-2023.fits.fz": "286d011fc05674dd4705ed08d016b033a399f565bb92f3c44faf6bc723da9266",
    "flats/0066_PKSJ0049-5738_13-05-2023.fits.fz": "e4023f9b51722ef33474bcbb1b6809174d1df8bd418a56af863810bff0805ccc",
    "lamp/0072_PKSJ0049-5738_13-05-2023_comp.fits.fz": "98030b6ca3f9d2fd8e6bb88246ebf5ecf928179e34600d83cf6d93010bd514f1",
    "lamp/0073_PKSJ0049-5738_13-05-2023_comp.fits.fz": "8437d2216b05db37b6461466d7bfee1488724838e8f0a01fb771f9788576fc33",
    "lamp/0074_PKSJ0049-5738_13-05-2023_comp.fits.fz": "141c2eb062311c95c0c7dd24b80ad8a5d4dea31ecc0be53ac075b54a6213d984",
    "spec_PKSJ0049_5738/0069_PKSJ0049-5738_13-05-2023.fits.fz": "79a6ac2a53307165c6193d6db9b3f593b4747165115303780f75d0aeb0255468",  # noqa: E501
    "spec_PKSJ0049_5738/0070_PKSJ0049-5738_13-05-2023.fits.fz": "caa816d0341d38a60e37fe925bca763f6ee7194d132143a1f43921fee92befd2",  # noqa: E501
    "std_star/0173_Calibration-Star_28-04-2023.fits.fz": "0f8c8dcb60c792d68b5daa9cc19149fe4f9289fc7f496266ca2995b083025a26",
}

DATA_DIR_ENV = "SPECWIDGETS_DATA_DIR"
DATA_URL_ENV = "SPECWIDGETS_DATA_URL"
CACHE_DIR_ENV = "SPECWIDGETS_CACHE_DIR"


# ------------------------------------------------------------------ finding
def _is_complete(folder, registry=None):
    registry = GOODMAN_REGISTRY if registry is None else registry
    return folder.is_dir() and all((folder / name).is_file() for name in registry)


def _missing(folder):
    return [name for name in GOODMAN_REGISTRY if not (folder / name).is_file()]


def _from_env():
    """The folder named by SPECWIDGETS_DATA_DIR, or None when it is unset."""
    value = os.environ.get(DATA_DIR_ENV)
    if not value:
        return None
    base = Path(value).expanduser()
    for folder in (base / "goodman", base):
        if _is_complete(folder):
            return folder.resolve()
    # An explicit setting that does not hold the sample is a mistake to
    # report, not a reason to quietly download 22 MB elsewhere.
    target = base / "goodman" if (base / "goodman").is_dir() else base
    missing = _missing(target)
    raise FileNotFoundError(
        f"{DATA_DIR_ENV}={value!r} does not hold the Goodman sample: {target} lacks "
        f"{len(missing)} of its {len(GOODMAN_REGISTRY)} files (e.g. {missing[0]}); "
        f"unset {DATA_DIR_ENV} to download it"
    )


def _candidate_dirs():
    """Shared-data folders looked at after the environment variable."""
    repo_root = Path(__file__).resolve().parents[2]
    return [Path.cwd() / ".." / "shared" / "data" / "goodman", repo_root / ".." / "shared" / "data" / "goodman"]


def _cache_dir(cache_dir=None):
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    import pooch

    return Path(pooch.os_cache("specwidgets")) / "goodman"


def find_local_goodman():
    """Return the local Goodman folder without downloading, or None.

    Looks at ``SPECWIDGETS_DATA_DIR``, the shared-data folders and the
    download cache, and accepts a folder only if every sample file is there
    (checksums are checked on download, not here).

    Raises
    ------
    FileNotFoundError
        If ``SPECWIDGETS_DATA_DIR`` is set but does not hold the sample.

    Examples
    --------
    >>> folder = find_local_goodman()
    >>> folder is None or (folder / "bias").is_dir()
    True
    """
    found = _from_env()
    if found is not None:
        return found
    for folder in [*_candidate_dirs(), _cache_dir()]:
        if _is_complete(folder):
            return folder.resolve()
    return None


def goodman_available():
    """True when the Goodman sample is on this machine (no download tried).

    Meant for ``pytest.mark.skipif``. A broken ``SPECWIDGETS_DATA_DIR``
    counts as not available.

    Examples
    --------
    >>> isinstance(goodman_available(), bool)
    True
    """
    try:
        return find_local_goodman() is not None
    except FileNotFoundError:
        return False


# ------------------------------------------------------------------ download
def fetch_goodman(base_url=None, registry=None, cache_dir=None):
    """Download the sample files missing from the cache and verify them.

    Parameters
    ----------
    base_url : str, optional
        Folder URL; ``<base_url>/<subpath>`` is each file. Defaults to
        ``SPECWIDGETS_DATA_URL`` if set, else :data:`GOODMAN_BASE_URL`.
    registry : dict, optional
        ``{subpath: sha256}``; defaults to :data:`GOODMAN_REGISTRY`.
    cache_dir : str or os.PathLike, optional
        Where to keep the files; defaults to ``SPECWIDGETS_CACHE_DIR`` if set,
        else ``pooch.os_cache("specwidgets") / "goodman"``.

    Returns
    -------
    pathlib.Path
        The folder holding the files, in the layout of the registry.

    Raises
    ------
    ValueError
        If a downloaded file's SHA256 differs from the registry (the file is
        not kept).
    OSError
        If a file cannot be downloaded.

    Examples
    --------
    >>> folder = fetch_goodman()  # doctest: +SKIP
    >>> sorted(p.name for p in folder.iterdir())  # doctest: +SKIP
    ['bias', 'flats', 'lamp', 'spec_PKSJ0049_5738', 'std_star']
    """
    import pooch
    import requests

    base_url = base_url or os.environ.get(DATA_URL_ENV) or GOODMAN_BASE_URL
    if not base_url.endswith("/"):
        base_url += "/"
    registry = GOODMAN_REGISTRY if registry is None else registry
    folder = _cache_dir(cache_dir)
    store = pooch.create(
        path=folder,
        base_url=base_url,
        registry={name: f"sha256:{digest}" for name, digest in registry.items()},
    )
    for name in registry:
        url = base_url + name
        try:
            store.fetch(name, progressbar=False)
        except ValueError as exc:
            raise ValueError(
                f"checksum mismatch for {name} downloaded from {url}: the file is corrupt or "
                f"changed upstream, so it was not kept ({exc})"
            ) from exc
        except (requests.ConnectionError, requests.Timeout) as exc:
            # Offline, or the host is unreachable: one plain sentence with the
            # fix (the raw error, with its connection-pool details, is chained).
            host = urllib.parse.urlsplit(url).netloc or url
            raise OSError(
                f"The Goodman sample is not on this machine and could not be downloaded "
                f"(no connection to {host}). Set {DATA_DIR_ENV} to a folder holding goodman/, "
                "or connect to the network and retry."
            ) from exc
        except requests.RequestException as exc:
            raise OSError(
                f"could not download {name} from {url} ({_short(exc)}). Set {DATA_DIR_ENV} to a "
                f"local copy of the sample, or {DATA_URL_ENV} to another mirror"
            ) from exc
        except OSError as exc:
            where = exc.filename or folder
            raise OSError(
                f"could not save the Goodman sample's {name} in {where} ({exc.strerror or exc}). "
                f"Set {CACHE_DIR_ENV} to a writable folder, or {DATA_DIR_ENV} to a local copy of the sample"
            ) from exc
    return folder.resolve()


def _short(exc):
    """An HTTP error as ``HTTP 404 Not Found``; other errors by their message's first line."""
    response = getattr(exc, "response", None)
    if response is not None and getattr(response, "status_code", None):
        return f"HTTP {response.status_code} {response.reason or ''}".strip()
    return (str(exc) or type(exc).__name__).splitlines()[0]


def goodman_path(download=True):
    """Return the folder holding the Goodman sample, downloading it if needed.

    Parameters
    ----------
    download : bool
        When no local copy is found, download it (True) or raise (False).

    Returns
    -------
    pathlib.Path
        Folder with ``bias/``, ``flats/``, ``lamp/``, ``spec_PKSJ0049_5738/``
        and ``std_star/``.

    Raises
    ------
    FileNotFoundError
        If ``SPECWIDGETS_DATA_DIR`` is set but lacks the sample, or nothing is
        found and ``download`` is False.

    Examples
    --------
    >>> folder = goodman_path()  # doctest: +SKIP
    >>> (folder / "bias").is_dir()  # doctest: +SKIP
    True
    """
    found = find_local_goodman()
    if found is not None:
        return found
    if not download:
        raise FileNotFoundError(
            f"the Goodman sample is not on this machine (set {DATA_DIR_ENV}, or call "
            "goodman_path(download=True))"
        )
    return fetch_goodman()


# ------------------------------------------------------------------ loading
@dataclass(frozen=True)
class GoodmanSample:
    """The Goodman sample, cropped, bias-subtracted and in electrons.

    Attributes
    ----------
    science : numpy.ndarray
        ``(2, n_rows, 2030)`` science frames of PKS J0049-5738 minus the bias.
    arc : numpy.ndarray
        ``(n_rows, 2030)`` median of the 3 HgAr+Ne lamp frames minus the bias.
    bias : numpy.ndarray
        ``(n_rows, 2030)`` median of the 5 bias frames.
    gain : float
        e-/ADU (1.4, from the headers).
    read_noise : float
        Electrons (4.74, from the headers).
    path : pathlib.Path
        The sample folder.
    crop_bds : tuple
        Rows kept of each trimmed frame.
    """

    science: np.ndarray
    arc: np.ndarray
    bias: np.ndarray
    gain: float
    read_noise: float
    path: Path
    crop_bds: tuple


def load_goodman(crop_bds=(680, 800), path=None):
    """Load the Goodman science and arc frames ready for background work.

    Parameters
    ----------
    crop_bds : (int, int or None)
        Rows to keep of each trimmed 947-row frame; the default holds the
        bright trace (rows ~700-790) with sky on both sides.
    path : str or os.PathLike, optional
        The sample folder; defaults to :func:`goodman_path`.

    Returns
    -------
    GoodmanSample

    Examples
    --------
    >>> sample = load_goodman()  # doctest: +SKIP
    >>> sample.science.shape, sample.arc.shape, sample.gain  # doctest: +SKIP
    ((2, 120, 2030), (120, 2030), 1.4)
    """
    folder = Path(path) if path is not None else goodman_path()
    options = {"instrument": "goodman", "crop_bds": crop_bds}
    bias, bias_meta = average_matching_files(folder / "bias", return_metadata=True, **options)
    lamp = average_matching_files(folder / "lamp", **options)
    science = collect_images_array(folder / "spec_PKSJ0049_5738", **options)
    science -= bias
    return GoodmanSample(
        science=science,
        arc=lamp - bias,
        bias=bias,
        gain=bias_meta[0]["gain"],
        read_noise=bias_meta[0]["read_noise"],
        path=folder,
        crop_bds=tuple(crop_bds),
    )
