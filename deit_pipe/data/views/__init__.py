"""Views on the host: a training view as a pure function of (image, view seed, config).

Owns the op table, each auto-augment op's draw, Pillow apply and kernel name (`ops.py`), a
view's random draws (`params.py`), their rendering with Pillow (`host.py`) and the
reference they are proved against, timm's own transform (`reference.py`).
Imports `decode/` and `sources/`.
"""
