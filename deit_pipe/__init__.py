"""deit-pipe: DeiT knowledge distillation from precomputed, replayable teacher targets."""

__version__ = "0.2.0"
