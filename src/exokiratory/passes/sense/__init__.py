"""PASS 1 sensing: cheap, pure functions that look at one image.

* :mod:`exokiratory.core.decode` turns any image file into a small canonical
  RGB working image plus file-level metadata (:class:`DecodedImage`).
* :mod:`exokiratory.passes.sense.signals` computes cheap global signals (colour,
  sharpness, noise, frequency, text-likeness) from that working image.

The submodules are imported lazily by callers; this package initialiser is
kept free of imports so that importing one submodule does not pull the others.
"""
