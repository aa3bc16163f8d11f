"""The seed's ``debug=True`` view: original, background and corrected image of each exposure."""

import numpy as np


def show_sky_debug(result):
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
