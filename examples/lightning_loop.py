"""Train a DeiT student on a deit-pipe store with Lightning (a LightningModule, the replay
loader as its train dataloader, the DDP strategy for several devices).

    python examples/lightning_loop.py --store STORE --out DIR --steps N [--devices D]
        [--batch-size B] [--epochs E] [--train-seed S]

The same flags as `own_loop.py`, and the same losses step for step. The loader shards
itself (each rank takes its views of every global step), checks every view against the
store, and puts batches on the device: Lightning is told not to re-shard or move them.
"""

from __future__ import annotations

import lightning as L
import torch
from own_loop import forward_loss, optimization, parse_args, save, student

import deit_pipe as dp


class DeiTStudent(L.LightningModule):
    """The student and DeiT's loss; optimisation is stepped by hand, as `deit-pipe train`
    steps it: timm's scheduler moves every step, drop-path is seeded per (step, rank)."""

    def __init__(self, args, store: dp.Store):
        super().__init__()
        self.args, self.store = args, store
        self.model = student(args, store, torch.device("cpu"))
        self.criterion = dp.distillation_loss(args.distill)
        self.automatic_optimization = False
        self.losses: list[float] = []

    def setup(self, stage: str) -> None:
        # Made here, after Lightning has set up torch.distributed: the loader reads the rank.
        self.loader = dp.ReplayLoader(
            self.store,
            batch_size=self.args.batch_size,
            epochs=self.args.epochs,
            distill=self.args.distill,
            device=self.trainer.strategy.root_device,
            max_steps=self.args.steps,
        )

    def train_dataloader(self) -> dp.ReplayLoader:
        return self.loader

    def configure_optimizers(self):
        optimizer, self.scheduler = optimization(self.args, self.model, self.store, self.loader)
        return optimizer  # timm's scheduler is stepped by hand, every step

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return batch  # already on the device, finished

    def training_step(self, batch: dp.Batch, batch_idx: int) -> torch.Tensor:
        torch.manual_seed(dp.step_seed(self.args.train_seed, batch.step, batch.rank))
        loss = forward_loss(self.model, self.criterion, batch)
        optimizer = self.optimizers()
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        optimizer.step()
        self.scheduler.step_update(batch.step + 1)
        mean = self.all_gather(loss.detach().double()).mean()
        self.losses.append(mean.item())
        return loss


def main(argv=None) -> None:
    import argparse

    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--devices", type=int, default=1)
    known, rest = extra.parse_known_args(argv)
    args = parse_args(rest)
    store = dp.open_store(args.store)
    module = DeiTStudent(args, store)
    trainer = L.Trainer(
        accelerator="auto",
        devices=known.devices,
        strategy="ddp" if known.devices > 1 else "auto",
        max_epochs=1,  # the loader spans the whole run: one Lightning "epoch"
        max_steps=args.steps or -1,
        use_distributed_sampler=False,  # the loader shards itself
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module)
    if trainer.is_global_zero:
        save(args.out, module.losses, module.model)


if __name__ == "__main__":
    main()
