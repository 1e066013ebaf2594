"""passes/flags."""
