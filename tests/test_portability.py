"""A store outlives the machine that made it: views must not depend on the CPU's vector ISA."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from deit_pipe.cli import main
from deit_pipe.data.views import erasing_noise
from deit_pipe.errors import StoreFormatError, StoreMismatchError
from deit_pipe.storage import FORMAT_VERSION, TargetStore, create_store
from tests.store_utils import fill_all, make_spec

# Renders the first pairs of epoch 0 with the DeiT recipe, erasing raised so most views are
# erased (twice, per-pixel noise), every pair mixed; prints the fingerprints.
RENDER = """
import json, sys
from deit_pipe.data import MixConfig, PairDataset, ViewConfig, collate_views, open_source, plan
spec, pairs = sys.argv[1], int(sys.argv[2])
src = open_source(spec); split = src.split("train")
cfg = ViewConfig.for_source(src, re_prob=0.8, re_count=2, re_mode="pixel")
ds = PairDataset(split, plan(0, 0, len(split), 3, MixConfig(), cfg.input_size), cfg)
batch = collate_views([ds[p] for p in range(pairs)])
print(json.dumps(batch["fingerprint"].tolist()))
"""


def _fingerprints(spec: str, pairs: int, capability: str) -> list[int]:
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability}
    out = subprocess.run(
        [sys.executable, "-c", RENDER, spec, str(pairs)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


@pytest.mark.parametrize("spec,pairs", [("digits", 160), ("fake:64:256", 32)])
def test_views_are_bit_identical_under_every_cpu_capability(spec, pairs):
    """torch's normal_ rounds differently per ISA; the erasing noise must not use it."""
    runs = {cap: _fingerprints(spec, pairs, cap) for cap in ("default", "avx2", "avx512")}
    assert len(set(runs["default"])) == 2 * pairs  # distinct views, so the check has teeth
    assert runs["avx2"] == runs["default"]
    assert runs["avx512"] == runs["default"]


def test_erasing_noise_is_standard_normal_shaped_and_exact():
    x = erasing_noise(np.random.PCG64(7), (400_000,)).numpy().astype(np.float64)
    assert abs(x.mean()) < 0.01 and abs(x.var() - 1) < 0.01
    assert x.min() >= -6 and x.max() <= 6
    assert abs(((x - x.mean()) ** 4).mean() / x.var() ** 2 - 3 + 0.1) < 0.05  # Irwin–Hall 12
    # Values are multiples of 2^-16: the construction never rounds.
    assert np.all(x * 65536 == np.round(x * 65536))
    again = erasing_noise(np.random.PCG64(7), (400_000,)).numpy()
    assert np.array_equal(again, x.astype(np.float32))


@pytest.mark.parametrize("version", [1, 2])
def test_an_old_format_store_is_refused_with_the_command_that_remakes_it(tmp_path, version):
    url = str(tmp_path / "old.zarr")
    fill_all(url, make_spec())
    group = zarr.open_group(url, mode="r+")
    meta = group.attrs["deit_pipe"]
    meta["format_version"] = version
    meta["plan"].update(epochs=2, seed=0, repeats=3)
    group.attrs["deit_pipe"] = meta
    with pytest.raises(StoreFormatError) as err:
        TargetStore(url)
    message = str(err.value)
    assert f"format version {version}" in message and "\n" not in message
    assert f"deit-pipe precompute --data fake:test --out {url} --epochs 2" in message
    assert "--overwrite" in message
    result = CliRunner().invoke(main, ["inspect", url])
    assert result.exit_code == 1 and "remake it with" in result.output
    # A precompute into it is refused too, never silently replacing it.
    with pytest.raises(StoreMismatchError, match="--overwrite"):
        create_store(url, make_spec())
    create_store(url, make_spec(), overwrite=True)
    assert TargetStore(url).meta["format_version"] == FORMAT_VERSION == 3
