"""passes/clusters."""
