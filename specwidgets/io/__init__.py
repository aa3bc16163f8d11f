"""Files in and out: instruments, FITS discovery and reading, outputs, sample and synthetic data.

Uses :mod:`specwidgets.core` only.

* :mod:`.discovery` - the one FITS naming rule (``.fits/.fit/.fts`` with ``.gz/.bz2/.fz``)
* :mod:`.instruments` - per-instrument readers (header keywords, trim sections, gain)
* :mod:`.loading` - the seed's ``collect_images_array`` and ``average_matching_files``
* :mod:`.fits_output` - the output FITS (sky, corrected, variance, warp, provenance)
* :mod:`.settings` - the session file the page saves and batch reads
* :mod:`.sample_data`, :mod:`.synthetic` - the Goodman sample and frames with known truth
"""
