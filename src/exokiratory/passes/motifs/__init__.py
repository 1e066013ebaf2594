"""passes/motifs."""
