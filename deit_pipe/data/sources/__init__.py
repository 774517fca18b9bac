"""Dataset sources: where images and labels come from, by index.

Owns the kinds of dataset (`source.py`: digits, fake, imagefolder, cifar; `parquet.py`,
`webdataset.py`), a dataset root on disk or behind a URL (`files.py`) and its local copies
(`cache.py`), a split's images by index and its blocks (`split.py`), what identifies a
dataset (`identity.py`) and the up-front check of every image (`scan.py`).
Imports `decode/` and the package's base modules; nothing above.
"""
