"""Generative probing (PASS 8): what the dataset affords a generative model.

* :mod:`exokiratory.passes.genprobe.inputs`: units (cluster exemplars x conditioning x strength
  x seed), prompts, init and control images, the stored encoding.
* :mod:`exokiratory.passes.genprobe.step`: the ``genprobe`` pass (img2img / ControlNet
  generations, re-embedded with the PASS 1 models) and the ``genprobe-measures`` derivation.
* :mod:`exokiratory.passes.genprobe.measures`: style stability, holes in the manifold, fragile
  motifs, reconstruction outlier scores (definitions in its docstring).
* :mod:`exokiratory.passes.genprobe.section`: the report section.

The models are diffusers pipelines (:mod:`exokiratory.models.diffusion`; the ``ml`` extra).
"""
