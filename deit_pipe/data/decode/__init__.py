"""Image decoding: a file's bytes as pixels, exactly as Pillow makes them.

Owns Pillow's full decode and its one-line failures (`pillow.py`) and the JPEG decoded only
where a view's crop needs it (`jpeg.py`, and the `_jpeg_region` extension built from csrc/).
Imports only the package's base modules.
"""
