"""Open-vocabulary detection (PASS 6), only where counting matters.

* :mod:`exokiratory.passes.detect.boxes`: from per-patch logits to kept detections (pure numpy).
* :mod:`exokiratory.passes.detect.step`: the ``detect`` pass, its queries from the prompt registry,
  and the ``detect_counts`` view.

The model is OWLv2 (:mod:`exokiratory.models.detect`; the ``ml`` extra).
"""
