"""TensorBoard event files under RUN/tb/: the scalars of `metrics.jsonl`, mirrored.

`metrics.jsonl` stays the source of truth; the events are for TensorBoard, the Hub and
anything else that reads them. `tensorboard` is an optional extra, imported only when asked.
"""

from __future__ import annotations

from pathlib import Path

from deit_pipe.errors import ConfigError

TB_DIR = "tb"
NOT_SCALARS = ("step", "epoch")  # the axis, not curves


def require(run_dir: Path | str | None = None) -> None:
    """Refuse `--tensorboard` up front, before a run directory exists, if it cannot work:
    without the package, or where RUN/tb is something other than a folder."""
    tb = Path(run_dir) / TB_DIR if run_dir is not None else None
    if tb is not None and (tb.exists() or tb.is_symlink()) and not tb.is_dir():
        raise ConfigError(
            f"{tb} is a file, not the folder of TensorBoard events --tensorboard writes: move "
            "it away, or drop --tensorboard (nothing was changed)"
        )
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise ConfigError(
            "--tensorboard needs the tensorboard package: pip install 'deit-pipe[tensorboard]' "
            "(or drop --tensorboard; metrics.jsonl has the same numbers)"
        ) from None


def open_writer(run_dir: Path, purge_step: int | None = None):
    """A SummaryWriter on RUN/tb; a resume purges events past its step, as `metrics.jsonl`
    drops its lines past it."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(Path(run_dir) / TB_DIR), purge_step=purge_step or None)


def scalars(record: dict, prefix: str = "") -> dict[str, float]:
    """A metrics record's numbers by TensorBoard tag: `train/loss`, `eval/avg/top1`, …"""
    if "eval" in record:
        return {
            f"eval/{head}/{name}": float(value)
            for head, values in record["eval"].items()
            for name, value in values.items()
        }
    return {
        f"{prefix or 'train'}/{k}": float(v)
        for k, v in record.items()
        if k not in NOT_SCALARS and isinstance(v, int | float) and not isinstance(v, bool)
    }


def write_record(writer, record: dict) -> None:
    for tag, value in scalars(record).items():
        writer.add_scalar(tag, value, record["step"])
    writer.flush()  # a reader (TensorBoard, a test) sees every line metrics.jsonl has


def audit_scalars(summary: dict, ema: bool) -> dict[str, float]:
    """An audit's numbers for one run (`card.audit_summary`) by tag: `audit/cls/top1`, …"""
    prefix = "audit_ema" if ema else "audit"
    return {
        f"{prefix}/{head}/{name}": float(value)
        for head, values in summary["heads"].items()
        for name, value in values.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


def add_audit(run_dir: Path, step: int, summary: dict, ema: bool) -> bool:
    """Add an audit's agreement metrics to a run trained with --tensorboard (RUN/tb exists);
    False when there is no such run or no tensorboard package (agreement.json has them)."""
    if not (Path(run_dir) / TB_DIR).is_dir():
        return False
    try:
        require()
    except ConfigError:
        return False
    writer = open_writer(run_dir)
    for tag, value in audit_scalars(summary, ema).items():
        writer.add_scalar(tag, value, step)
    writer.close()
    return True
