"""passes/zeroshot."""
