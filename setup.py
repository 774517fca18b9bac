"""The one compiled part: decoding only a crop's region of a JPEG (csrc/jpeg_region.c), or
only its DCT blocks for the device (csrc/jpeg_blocks.c).

Optional: without a C compiler the build goes on without it and views decode with Pillow
whole, the same bytes, slower (`deit_pipe.data.decode.jpeg`).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "deit_pipe.data.decode._jpeg_region",
            ["csrc/jpeg_region.c", "csrc/jpeg_blocks.c"],
            include_dirs=["csrc/libjpeg-turbo"],
            libraries=["dl"],
            extra_compile_args=["-O2", "-ftree-vectorize"],
            optional=True,
        )
    ]
)
