"""PASS 5: selective captioning (selection, captioners, caption embeddings)."""
