"""A corpus of images no one here made, through the CLI as a user runs it (`make bench-corpus`).

Pillow's own test images (`Tests/images` of its source distribution: odd sizes, modes,
palettes, truncated and damaged files, 16-bit TIFFs, CMYK JPEGs, ...) are the default:
`pip download pillow==X --no-binary :all: --no-deps` fetches them from PyPI, where
nothing else in the run is downloaded. Every file whose name an image folder takes is
copied into a ten-class image folder, then

  scan                                   what is unreadable, in one line each
  precompute --skip-bad --render device  the kernels render every stored view
  verify --all --render host             Pillow re-renders them: the same bytes?

and each command must exit as it says (no traceback). Writes the figures into
benchmarks/corpus.json; BENCHMARKS.md quotes them.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from deit_pipe.data.sources.source import IMAGE_EXTENSIONS

HERE = Path(__file__).resolve().parent


def pillow_images(into: Path) -> Path:
    """Pillow's Tests/images for the installed Pillow's version, from PyPI's sdist."""
    import PIL

    pin = f"pillow=={PIL.__version__}"
    cmd = [sys.executable, "-m", "pip", "download", pin, "--no-binary", ":all:", "--no-deps"]
    subprocess.run([*cmd, "-q", "-d", str(into)], check=True)
    (sdist,) = into.glob("pillow-*.tar.gz")
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if "/Tests/images/" in m.name and m.isfile()]
        tar.extractall(into, members=members, filter="data")
    (images,) = into.glob("pillow-*/Tests/images")
    return images


def image_folder(images: Path, root: Path) -> int:
    """Copy every file an image folder takes into root/train/c0..c9/ (ten classes, as the
    store keeps the top 10); how many."""
    files = sorted(p for p in images.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    for k, path in enumerate(files):
        target = root / "train" / f"c{k % 10}" / f"{k:04d}-{path.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return len(files)


def cli(*args: str) -> dict:
    """Run `deit-pipe ARGS`; its exit status, last line and whether it printed a traceback."""
    run = subprocess.run(
        [sys.executable, "-m", "deit_pipe", *args], capture_output=True, text=True, check=False
    )
    said = [line for line in run.stderr.splitlines() if line.startswith("error")]
    return {
        "rc": run.returncode,
        "traceback": "Traceback" in run.stderr or "Traceback" in run.stdout,
        "error": said[-1] if said else "",
        "stdout": run.stdout,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=Path, help="a folder of images [default: Pillow's own]")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE / "corpus.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        images = args.images or pillow_images(work / "sdist")
        files = image_folder(images, work / "folder")
        data = f"imagefolder:{work / 'folder'}"
        scan = cli("scan", "--data", data, "--json")
        store = str(work / "corpus.zarr")
        precompute = cli(
            "precompute", "--data", data, "--out", store, "--epochs", str(args.epochs),
            "--split", "train", "--input-size", "32", "--teacher-model", "regnety_002",
            "--teacher-random-init", "--dask-workers", "0", "--device", "cpu", "--skip-bad",
            "--render", "device", "--batch-size", "32",
        )  # fmt: skip
        verify = cli("verify", store, "--all", "--render", "host", "--json")
    result = {
        "machine": f"{platform.machine()}, {platform.python_version()}",
        "images": str(args.images or "Pillow's Tests/images"),
        "files": files,
    }
    for name, step in (("scan", scan), ("precompute", precompute), ("verify", verify)):
        result[name] = {k: step[k] for k in ("rc", "traceback", "error")}
        if name != "precompute" and step["rc"] in (0, 1) and not step["traceback"]:
            result[name]["report"] = json.loads(step["stdout"])
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    sys.exit(int(any(r["traceback"] for r in (scan, precompute, verify)) or verify["rc"] != 0))


if __name__ == "__main__":
    main()
