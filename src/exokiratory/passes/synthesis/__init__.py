"""PASS 7: re-aggregation and synthesis (motif bags, co-occurrence graph, comparisons)."""
