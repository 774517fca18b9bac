"""Checkpoints proven by their checksum: a flipped byte is refused in one line by eval, audit
and a resume, the damaged file kept for the user; a checkpoint from before checksums loads."""

from pathlib import Path

from tests.cli_utils import invoke, one_line
from tests.run_utils import TINY


def flip_a_weight_byte(checkpoint: Path) -> None:
    """One bit of the model's largest matrix, where torch.save stored its bytes (a matrix:
    a conv weight is saved in channels-last order)."""
    import torch

    state = torch.load(checkpoint, weights_only=True)
    tensor = max((t for t in state["model"].values() if t.ndim <= 2), key=lambda t: t.numel())
    raw = tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes()
    data = bytearray(checkpoint.read_bytes())
    at = data.find(raw) + len(raw) // 2
    assert at > len(raw) // 2
    data[at] ^= 0x10
    checkpoint.write_bytes(bytes(data))


def test_a_flipped_checkpoint_byte_is_refused_by_eval_audit_and_resume(trained, tmp_path):
    import torch

    _, store, run = trained
    checkpoint = run / "checkpoint.pt"
    flip_a_weight_byte(checkpoint)
    damaged = checkpoint.read_bytes()
    one_line(invoke("eval", "--checkpoint", run), str(checkpoint), "damaged")
    audit = ["audit", "--store", store, "--run", run, "--train-views", "0"]
    one_line(invoke(*audit, "--out", tmp_path / "a"), str(checkpoint), "damaged")
    train = ["train", "--store", store, "--out", run, *TINY, "--epochs", "1"]
    resumed = invoke(*train, "--batch-size", "6", "--max-steps", "2", "--resume")
    one_line(resumed, str(checkpoint), "damaged")
    assert checkpoint.read_bytes() == damaged  # kept for the user to inspect, not replaced
    # A checkpoint written before checksums loads as it always did.
    state = torch.load(checkpoint, weights_only=True)
    state.pop("checksum")
    torch.save(state, checkpoint)
    assert invoke("eval", "--checkpoint", run).exit_code == 0
