"""The names users choose between, in a module that imports nothing heavy.

The CLI builds its options (and answers `--help`) from these without importing torch, timm
or zarr; the library modules that implement each choice import them from here, so a name
exists in one place.
"""

DEVICES = ("auto", "cpu", "cuda")
# Who runs a view's Pillow stage: Pillow on the loader's host, or exact tensor kernels on the
# device that consumes the views (same bytes); auto = the host, except that training on CUDA
# times both and keeps the faster (`student.rendertrial`).
RENDERERS = ("host", "device")
RENDERS = ("auto", *RENDERERS)
DISTILL = ("none", "soft", "hard")
KL_REDUCTIONS = ("batchmean", "numel")
TARGETS = ("soft", "hard")  # top-k logits + logsumexp, or the teacher's top-1 class alone
VALUE_DTYPES = ("float16", "float32")
# Recipe presets (`data.plan.recipe.PRESETS` holds their values) and what each is for.
PRESET_SUMMARIES = {
    "deit": "the DeiT paper's ImageNet recipe: 3 repeats, RandAugment m9, erasing 0.25, "
    "mixup 0.8 / cutmix 1.0 on every pair; AdamW 5e-4, 300 epochs",
    "small": "thousands of tiny images (digits, CIFAR-size): 1 view per image per epoch, "
    "crops of ≥ 35% of the image, the rest of DeiT's augmentation; AdamW "
    "1.6e-2 per 512 (2e-3 at batch 64), 60 epochs",
    "finetune": "DeiT's ↑resolution fine-tuning (`--finetune`): the DeiT views at the new size, "
    "lr 5e-6 constant after warmup, weight decay 1e-8, 30 epochs",
}
# The head an exported student's forward returns: cls+dist averaged (timm's eval), or one.
EXPORT_HEADS = ("avg", "cls", "dist")
