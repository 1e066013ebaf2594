"""passes/segment_embed."""
