"""Depth (PASS 6): relative depth of the routed photographs, summarised per image and segment.

* :mod:`exokiratory.passes.depth.stats`: the per-image statistics and the small depth map.
* :mod:`exokiratory.passes.depth.segments`: per-segment depth from the map and the SAM masks.
* :mod:`exokiratory.passes.depth.step`: the ``depth`` pass and the ``depth-segments`` derivation.

The model is Depth Anything V2 (:mod:`exokiratory.models.depth`; the ``ml`` extra).
"""
