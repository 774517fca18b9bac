"""Loaders: torch Datasets and samplers that hand a run its batches of views.

Owns the Datasets over epoch plans and eval views (`dataset.py`), the block-order loader
(`blocks.py`) and the labelled grid of an epoch's first views (`preview.py`).
Imports every other room of `data/`.
"""
