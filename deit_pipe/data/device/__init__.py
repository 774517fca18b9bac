"""The device stage: a batch's views rendered and finished where the student runs.

Owns the Pillow stage as batched kernels bit-identical to Pillow (`kernels/`, `render.py`,
`augsteps.py`), JPEG crops as DCT blocks (`jpegblocks.py`) and finishing: uint8 views
normalised, erased and mixed (`finish.py`).
Imports `decode/`, `plan/` and `views/`.
"""
