"""passes/probe."""
