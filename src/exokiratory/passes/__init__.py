"""Pass families, one folder each: the family's step classes (``step.py``, registered with
:func:`exokiratory.engine.registry.register`), its pure algorithm modules, and optionally its
flag rules (``flag_rules.py``) and report section (``section.py``).

Nothing is imported here: :func:`exokiratory.engine.registry.discover` imports the families.
"""
