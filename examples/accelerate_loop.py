"""Train a DeiT student on a deit-pipe store with Hugging Face Accelerate.

    python examples/accelerate_loop.py --store STORE --out DIR --steps N [--batch-size B]
        [--epochs E] [--train-seed S]
    accelerate launch --num_processes 2 examples/accelerate_loop.py --store STORE ...

The same flags as `own_loop.py`, and the same losses step for step. Accelerate prepares
the model and optimiser (DDP, mixed precision as configured); the replay loader is not
prepared: it shards itself by rank and checks every view against the store.
"""

from __future__ import annotations

import torch
from accelerate import Accelerator
from own_loop import forward_loss, optimization, parse_args, save, student

import deit_pipe as dp


def main(argv=None) -> None:
    args = parse_args(argv)
    accelerator = Accelerator()  # sets up torch.distributed under `accelerate launch`
    store = dp.open_store(args.store)
    loader = dp.ReplayLoader(
        store,
        batch_size=args.batch_size,
        epochs=args.epochs,
        distill=args.distill,
        device=accelerator.device,
        max_steps=args.steps,
    )
    model = student(args, store, accelerator.device)
    optimizer, scheduler = optimization(args, model, store, loader)
    model, optimizer = accelerator.prepare(model, optimizer)
    criterion = dp.distillation_loss(args.distill)
    losses = []
    for batch in loader:
        torch.manual_seed(dp.step_seed(args.train_seed, batch.step, batch.rank))
        loss = forward_loss(model, criterion, batch)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        optimizer.step()
        scheduler.step_update(batch.step + 1)
        losses.append(accelerator.gather(loss.detach().double()[None]).mean().item())
    if accelerator.is_main_process:
        save(args.out, losses, accelerator.unwrap_model(model))
    accelerator.end_training()


if __name__ == "__main__":
    main()
