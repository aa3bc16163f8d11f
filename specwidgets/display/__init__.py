"""Pictures from arrays: raster encoding, colour maps, bqplot figures, SED aggregation.

Uses :mod:`specwidgets.core`; bqplot is imported only by :mod:`.plotting`
(so ``raster`` and ``aggregate`` work without it).
"""
