"""Datasets as text + binary label, their disjoint splits, and tokenised batches."""
