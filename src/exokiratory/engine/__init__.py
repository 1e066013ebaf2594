"""The runner: plans pass work as an anti-join, splits it into batches, runs them on an executor."""
