"""passes/embed."""
