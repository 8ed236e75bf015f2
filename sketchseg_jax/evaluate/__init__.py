"""Evaluation: metrics (retrieval, segmentation) and the evaluators stages use."""
