"""A store outlives the machine that made it: views must not depend on the CPU's vector ISA."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner

from deit_pipe.cli import main
from deit_pipe.data import open_source
from deit_pipe.data.device.finish import erasing_noise
from deit_pipe.errors import StoreFormatError, StoreMismatchError
from deit_pipe.storage import FORMAT_VERSION, TargetStore, create_store
from tests.store_utils import fill_all, make_spec

# Renders (with Pillow, or with the device kernels on the CPU) and finishes the first pairs
# of epoch 0 with the DeiT recipe, erasing raised so
# most views are erased (up to twice, per-pixel noise), every pair mixed; prints, per view,
# its fingerprint and a hash of its finished float32 bytes.
RENDER = """
import hashlib, json, sys, torch
from deit_pipe.data import *
from deit_pipe.data.device.render import realize
spec, pairs, render = sys.argv[1], int(sys.argv[2]), sys.argv[3]
src = open_source(spec); split = src.split("train")
cfg = ViewConfig.for_source(src, re_prob=0.5, re_count=2, re_mode="pixel")
ds = PairDataset(split, plan(0, 0, len(split), 3, MixConfig(), cfg.input_size), cfg, render)
batch = collate_views([ds[p] for p in range(pairs)])
if render == "device":
    batch = realize(batch, torch.device("cpu"))
views = finish(batch, cfg, torch.device("cpu")).numpy()
digest = [hashlib.blake2b(v.tobytes(), digest_size=8).hexdigest() for v in views]
print(json.dumps([batch.fingerprint.tolist(), digest, int((batch.erase[..., 2] > 0).sum())]))
"""


def _fingerprints(spec: str, pairs: int, capability: str, render: str = "host") -> list:
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability}
    out = subprocess.run(
        [sys.executable, "-c", RENDER, spec, str(pairs), render],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


@pytest.mark.parametrize(
    "spec,pairs,render",
    [("digits", 160, "host"), ("fake:32:256", 16, "host"), ("fake:32:256", 8, "device")],
)
@pytest.mark.slow
def test_views_are_bit_identical_under_every_cpu_capability(spec, pairs, render):
    """Rendered and finished views (normalize, erasing noise, mixup/cutmix): torch's
    `normal_` and any fused or approximate kernel would round differently per ISA. The
    device kernels, run on the CPU, give the host's bytes under every capability too."""
    caps = ("default", "avx2", "avx512")
    runs = {cap: _fingerprints(spec, pairs, cap, render) for cap in caps}
    fingerprints, finished, erased = runs["default"]
    assert len(set(fingerprints)) == len(set(finished)) == 2 * pairs  # the check has teeth
    assert erased >= pairs // 2
    assert runs["avx2"] == runs["default"]
    assert runs["avx512"] == runs["default"]
    if render == "device":
        assert _fingerprints(spec, pairs, "default", "host") == runs["default"]


def test_erasing_noise_is_standard_normal_shaped_and_exact():
    key, index = torch.tensor(7), torch.arange(400_000)
    x = erasing_noise(key, index).numpy().astype(np.float64)
    assert abs(x.mean()) < 0.01 and abs(x.var() - 1) < 0.01
    assert x.min() >= -6 and x.max() <= 6
    assert abs(((x - x.mean()) ** 4).mean() / x.var() ** 2 - 3 + 0.1) < 0.05  # Irwin–Hall 12
    # Values are multiples of 2^-8 (so of 2^-16): the construction never rounds.
    assert np.all(x * 65536 == np.round(x * 65536))
    assert np.array_equal(erasing_noise(key, index).numpy(), x.astype(np.float32))
    assert not np.array_equal(erasing_noise(torch.tensor(8), index).numpy(), x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_finishing_on_cuda_gives_the_cpu_bytes():
    """The same rendered batch finished on the GPU and on the CPU: identical float32 bits
    (normalize, per-pixel erasing noise at re_prob 0.5, mixup and cutmix pairs, at 224²)."""
    from deit_pipe.data import MixConfig, PairDataset, ViewConfig, collate_views, finish, plan

    src = open_source("fake:32:256")
    cfg = ViewConfig.for_source(src, input_size=224, re_prob=0.5, re_count=2, re_mode="pixel")
    split = src.split("train")
    ds = PairDataset(split, plan(0, 0, len(split), 3, MixConfig(), 224), cfg)
    batch = collate_views([ds[p] for p in range(16)])
    assert (batch.erase[..., 2] > 0).any() and set(batch.mix.tolist()) == {1, 2}
    cpu = finish(batch, cfg, torch.device("cpu"))
    gpu = finish(batch, cfg, torch.device("cuda")).cpu()
    assert torch.equal(cpu.view(torch.int32), gpu.view(torch.int32))


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


def test_a_store_of_older_views_is_refused_with_the_command_that_remakes_it(tmp_path):
    """Format 3, plan version 2: host-finished float32 views that this deit-pipe no longer
    renders (its fingerprints could never match)."""
    from tests.store_utils import resign_meta

    url = str(tmp_path / "v2.zarr")
    fill_all(url, make_spec())
    resign_meta(url, lambda meta: meta["plan"].update(plan_version=2, epochs=2))
    result = CliRunner().invoke(main, ["inspect", url])
    assert result.exit_code == 1
    (line,) = [x for x in result.output.splitlines() if x.startswith("error:")]
    assert "plan version 2" in line and f"precompute --data fake:test --out {url}" in line
