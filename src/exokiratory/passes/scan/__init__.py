"""PASS 0: the frozen image manifest (``images``) and the path registry (``paths``)."""
