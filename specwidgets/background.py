"""Sky-background estimation from the super-sampled sky spectrum.

:func:`fit_sky` returns a :class:`SkyResult` (background, variance, mask,
effective-pixel map, samples, model curve, chi image); :func:`extract_background`
is the seed-compatible front that returns arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .inputs import as_image_stack, check_number, check_spatial_order, mask_ranges, mask_rows
from .median_sky import median_of_bins
from .warp import WarpModel

__all__ = ["SkyResult", "SkySamples", "fit_sky", "extract_background", "METHODS"]

METHODS = ("bspline", "median")


@dataclass(eq=False)
class SkySamples:
    """The super-sampled sky spectrum: every unmasked pixel, sorted by effective position.

    Attributes
    ----------
    effpix : (n_samples,) array
        Effective position of each sample, ascending.
    flux : (n_exposures, n_samples) array
        Each exposure's value at those pixels (NaN where the input was NaN).
    index : (n_samples,) int array
        Flat index (``row * n_cols + col``) of each sample's pixel.
    n_cols : int
        Columns of the images.
    """

    effpix: np.ndarray
    flux: np.ndarray
    index: np.ndarray
    n_cols: int

    @property
    def rows(self):
        """Row of each sample's pixel."""
        return self.index // self.n_cols


def sky_samples(stack, warp_model, masked_rows):
    """Gather the unmasked pixels of every exposure in effective-pixel order.

    The sort of the whole effective-pixel map is cached on the warp model, so
    a new mask costs one pass over the pixels, not a new sort.
    """
    n_exp, n_rows, n_cols = stack.shape
    order = warp_model._cache.get("order")
    if order is None:
        # Column by column the map is already nearly sorted, which timsort
        # (kind="stable") exploits: several times faster than row order.
        by_column = np.argsort(warp_model.effpix_map().T.ravel(), kind="stable")
        # Pixel indices fit in int32 below 2**31 pixels: half the memory of
        # the cached order and of every sample index (the same values).
        if n_rows * n_cols < 2**31:
            by_column = by_column.astype(np.int32)
        order = by_column % n_rows  # the row ...
        by_column //= n_rows  # ... and the column of each pixel in effective-pixel order
        order *= n_cols
        order += by_column
        del by_column
        warp_model._cache["order"] = order
    keep = ~masked_rows[order // n_cols]
    index = order[keep]
    effpix = warp_model.effpix_map().ravel()[index]
    flux = stack.reshape(n_exp, -1)[:, index]
    return SkySamples(effpix, flux, index, n_cols)


@dataclass(eq=False)
class SkyResult:
    """A sky-background estimate and everything needed to judge it.

    Attributes
    ----------
    data : (n_exposures, n_rows, n_cols) array
        The images the sky was fit to.
    background : (n_exposures, n_rows, n_cols) array
        The estimated sky in every pixel (masked rows included).
    variance : (n_exposures, n_rows, n_cols) array
        Variance of the background estimate itself.
    mask : (n_rows, n_cols) bool array
        True on pixels excluded from the fit (the masked rows).
    rejected : (n_exposures, n_rows, n_cols) bool array
        Sky pixels the fit rejected as outliers (cosmic rays, hot pixels).
    effpix_map : (n_rows, n_cols) array
        Effective pixel of every pixel.
    samples : SkySamples
        The super-sampled sky spectrum the fit used.
    method : str
    read_noise, gain : float
        Noise model: data variance = max(sky, 0) / gain + (read_noise / gain)**2.
    models : list
        Per exposure, the fitted sky model (a ``BSplineSky``) or None.
    """

    data: np.ndarray
    background: np.ndarray
    mask: np.ndarray
    rejected: np.ndarray
    effpix_map: np.ndarray
    samples: SkySamples
    method: str
    ref_row: int = 0
    read_noise: float = 0.0
    gain: float = 1.0
    mask_region: list = field(default_factory=list)
    models: list = field(default_factory=list)
    options: dict = field(default_factory=dict)
    _variance: np.ndarray | None = field(default=None, repr=False)
    _exposure_variance: dict = field(default_factory=dict, repr=False)

    def exposure_variance(self, k):
        """Variance of exposure ``k``'s background estimate (computed on first use)."""
        if self._variance is not None:
            return self._variance[k]
        if k not in self._exposure_variance:
            n_rows, n_cols = self.effpix_map.shape
            rows = np.broadcast_to(np.arange(n_rows)[:, None], (n_rows, n_cols))
            self._exposure_variance[k] = self.models[k].model_variance(self.effpix_map, rows)
        return self._exposure_variance[k]

    @property
    def variance(self):
        """Variance of the background estimate in every pixel (computed on first use)."""
        if self._variance is None:
            self._variance = np.stack([self.exposure_variance(k) for k in range(len(self.models))])
            self._exposure_variance.clear()
        return self._variance

    def exposure_chi(self, k):
        """:attr:`chi` of exposure ``k`` alone (a viewer showing one exposure need not pay for all)."""
        background = self.background[k]
        noise = np.clip(background, 0, None) / self.gain + (self.read_noise / self.gain) ** 2
        with np.errstate(divide="ignore", invalid="ignore"):
            return (self.data[k] - background) / np.sqrt(noise + self.exposure_variance(k))

    @property
    def corrected(self):
        """Data minus background."""
        return self.data - self.background

    @property
    def noise_variance(self):
        """Expected variance of each sky pixel's value about the background."""
        return np.clip(self.background, 0, None) / self.gain + (self.read_noise / self.gain) ** 2

    @property
    def sigma(self):
        """Standard deviation of (data - background) in a sky pixel."""
        return np.sqrt(self.noise_variance + self.variance)

    @property
    def chi(self):
        """``(data - background) / sigma``: unit scatter where the sky is modelled well."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.corrected / self.sigma

    def model_curve(self, exposure=0):
        """The sky model as a curve ``(effpix, counts)`` for plotting over the samples."""
        model = self.models[exposure] if self.models else None
        if model is not None:
            return model.curve()
        # The median of bins has no curve of its own; at the reference row the
        # effective pixel equals the column, so that row traces it.
        return self.effpix_map[self.ref_row].copy(), self.background[exposure, self.ref_row].copy()


def _noise_model(read_noise, gain):
    read_noise = check_number(read_noise, "read_noise", allow_none=True)
    gain = check_number(gain, "gain", allow_none=True)
    read_noise = 0.0 if read_noise is None else read_noise
    gain = 1.0 if gain is None else gain
    if not np.isfinite(read_noise) or read_noise < 0:
        raise ValueError(f"read_noise must be a non-negative number of electrons; got {read_noise!r}")
    if not np.isfinite(gain) or gain <= 0:
        raise ValueError(f"gain must be a positive number of electrons per data unit; got {gain!r}")
    return read_noise, gain


def fit_sky(
    images,
    warp_model,
    mask_region=(None, None),
    method="bspline",
    *,
    read_noise=None,
    gain=None,
    progress=False,
    initial=None,
    **options,
):
    """Estimate the sky background of every pixel of one image or a stack.

    Parameters
    ----------
    images : array_like
        ``(n_rows, n_cols)`` or ``(n_exposures, n_rows, n_cols)``; NaN pixels
        (bad columns, cosmic-ray holes) are ignored.
    warp_model : WarpModel
        Fit on an arc of the same shape (see :func:`generate_warp_model`).
    mask_region : (int, int) or list of (int, int)
        Rows ``start:stop`` to keep out of the sky fit (the trace); several
        ranges may be given. ``(None, None)`` masks nothing.
    method : {"bspline", "median"}
        ``"median"``: the seed's estimator, the median of the samples inside
        each pixel's edges. ``"bspline"``: a Kelson (2003) B-spline fit with
        outlier rejection and a noise model.
    read_noise, gain : float, optional
        Noise model in electrons (default 0 and 1: data in electrons).
    progress : bool
        Print one line per exposure.
    initial : SkyResult, optional
        A previous B-spline result for the same images and warp model: its
        fits start the new ones (a nudged mask then costs one or two passes).
    **options
        For ``"bspline"``: ``knot_spacing``, ``spatial_order``, ``reject_sigma``,
        ``max_iterations`` (see :func:`specwidgets.bspline_sky.fit_bspline_sky`).

    Returns
    -------
    SkyResult
    """
    stack, _ = as_image_stack(images, "images")
    if not isinstance(warp_model, WarpModel):
        raise TypeError(
            f"warp_model must be a WarpModel (from generate_warp_model); got {type(warp_model).__name__}"
        )
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    # The frames' own noise model (loaders' FrameArray) when none is passed.
    read_noise = getattr(images, "read_noise", None) if read_noise is None else read_noise
    gain = getattr(images, "gain", None) if gain is None else gain
    read_noise, gain = _noise_model(read_noise, gain)
    if "spatial_order" in options:
        check_spatial_order(options["spatial_order"])
    n_exp, n_rows, n_cols = stack.shape
    if n_cols < 2:
        raise ValueError(
            f"images have {n_cols} column(s); a sky fit needs a spectrum along the columns "
            "(dispersion along x): check the instrument's dispersion_axis (transpose the frames?)"
        )
    if warp_model.coefficients.size and not np.isfinite(warp_model.coefficients).all():
        raise ValueError(
            "warp_model has NaN or infinite coefficients: refit it (generate_warp_model) on the arc"
        )
    emap = warp_model.effpix_map((n_rows, n_cols))
    ranges = mask_ranges(mask_region, n_rows)
    masked_rows = mask_rows(ranges, n_rows)
    samples = sky_samples(stack, warp_model, masked_rows)
    if not np.isfinite(samples.flux).any():
        raise ValueError("every unmasked pixel is NaN: there is no sky to fit")

    rejected = np.zeros(stack.shape, bool)
    models = []
    if method == "median":
        if options:
            raise TypeError(f"method='median' takes no options; got {sorted(options)}")
        background, counts = median_of_bins(samples.effpix, samples.flux, warp_model.edge_map())
        # The median of n samples scatters sqrt(pi/2) times more than their mean.
        noise = np.clip(background, 0, None) / gain + (read_noise / gain) ** 2
        variance = (np.pi / 2) * noise / np.maximum(counts, 1)[None]
        if progress:
            print(f"median of bins: {n_exp} exposure(s), {samples.effpix.size} sky samples each")
    else:
        from .bspline_sky import fit_bspline_sky

        background = np.empty(stack.shape)
        variance = None
        rows_grid = np.broadcast_to(np.arange(n_rows)[:, None], (n_rows, n_cols))
        sample_rows = samples.rows.astype(float) if options.get("spatial_order", 0) else None
        # Knots over the whole map, not just the samples, so that a new mask
        # keeps the same knots and a previous fit can start the new one.
        extent = (float(emap.min()), float(emap.max()))
        same_fit = initial is not None and initial.effpix_map is emap and len(initial.models) == n_exp
        warm = initial.models if same_fit else [None] * n_exp
        for k in range(n_exp):
            model = fit_bspline_sky(
                samples.effpix,
                samples.flux[k],
                sample_rows,
                row_range=(0, n_rows),
                read_noise=read_noise,
                gain=gain,
                extent=extent,
                initial=warm[k],
                **options,
            )
            background[k] = model(emap, rows_grid)
            rejected[k].ravel()[samples.index[model.outliers]] = True
            models.append(model)
            if progress:
                print(f"exposure {k + 1}/{n_exp}: B-spline sky, {int(model.rejected.sum())} samples rejected")

    mask = np.broadcast_to(masked_rows[:, None], (n_rows, n_cols)).copy()
    return SkyResult(
        data=stack,
        background=background,
        mask=mask,
        rejected=rejected,
        effpix_map=emap,
        samples=samples,
        method=method,
        ref_row=warp_model.ref_row,
        read_noise=read_noise,
        gain=gain,
        mask_region=ranges,
        models=models,
        options=dict(options),
        _variance=variance,
    )


def extract_background(
    images,
    warp_model,
    mask_region=(None, None),
    return_spectrum=False,
    progress=False,
    debug=False,
    method="bspline",
    **options,
):
    """Estimate the sky background in every pixel (the seed's interface).

    Parameters
    ----------
    images : array_like
        One 2D image (a 2D background is returned) or a 3D stack.
    warp_model : WarpModel
    mask_region : (int, int) or list of (int, int)
        Rows ``start:stop`` excluded from the sky (the trace).
    return_spectrum : bool
        Also return the super-sampled spectrum: ``(background, effpix, flux,
        effpix_map)`` where ``effpix`` is the flattened effective-pixel map
        with NaN on masked pixels, ``flux`` is ``(n_exposures, n_pixels)``
        and ``effpix_map`` is 2D with NaN on masked rows.
    progress : bool
        Print progress.
    debug : bool
        Show the original, background and corrected image of each exposure.
    method : {"bspline", "median"}
        Sky estimator; see :func:`fit_sky`. ``"median"`` is the seed's.
    **options
        ``read_noise``, ``gain`` and the method's options (see :func:`fit_sky`).

    Returns
    -------
    background : ndarray, or the tuple above

    Examples
    --------
    >>> from specwidgets.datasets import make_synthetic_longslit
    >>> frames = make_synthetic_longslit(shape=(60, 400), seed=2)
    >>> bg = extract_background(frames.science, frames.warp, mask_region=frames.trace_rows, method="median")
    >>> bg.shape
    (1, 60, 400)
    """
    was_2d = np.ndim(images) == 2
    result = fit_sky(images, warp_model, mask_region, method=method, progress=progress, **options)
    background = result.background[0] if was_2d else result.background
    if debug:
        _show_debug(result)
    if not return_spectrum:
        return background
    emap = result.effpix_map.copy()
    emap[result.mask] = np.nan
    n_exp = result.data.shape[0]
    flux = result.data.reshape(n_exp, -1)
    return background, emap.ravel(), flux, emap


def _show_debug(result):
    """Show original, background and corrected images (the seed's ``debug=True``)."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython ships with every notebook
        get_ipython = lambda: None  # noqa: E731
    if get_ipython() is None:
        # Outside IPython there is nowhere to draw: say what would be shown.
        for k in range(result.data.shape[0]):
            print(
                f"exposure {k}: original median {np.nanmedian(result.data[k]):.4g}, background median "
                f"{np.nanmedian(result.background[k]):.4g}, corrected sky-row std "
                f"{np.nanstd(result.corrected[k][~result.mask[:, 0]]):.4g}"
            )
        return
    # Display needs a notebook and the widget layer; the core stays usable without them.
    from IPython.display import display

    from .plotting import plot_image

    for k in range(result.data.shape[0]):
        for image, title in (
            (result.data[k], f"Original (exposure {k})"),
            (result.background[k], f"Background (exposure {k})"),
            (result.corrected[k], f"Corrected (exposure {k})"),
        ):
            display(plot_image(image, norm="log", title=title))
