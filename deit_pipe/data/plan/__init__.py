"""The stateless epoch plan: which sample, pair and seed each slot of an epoch takes.

Owns the plan itself (`epoch.py`), the orders an epoch's samples are taken in (`order.py`)
and the recipes that decide everything a view is (`recipe.py`).
Imports `sources/` and `views/` (a recipe holds a `ViewConfig`).
"""
