"""The Pillow stage of a view as batched tensor kernels, bit-identical to the pinned Pillow
(and, in `jpegdecode`, a JPEG crop's decode after its entropy decoding, bit-identical to the
libjpeg-turbo that Pillow bundles).

Each module mirrors one family of Pillow's C functions (named in its docstring). Images are
uint8 [B, H, W, C] tensors (Pillow's HWC layout, channels-last once permuted) on any device;
per-view coefficients and matrices are computed on the host in float64, as Pillow computes
them, and travel with the batch. Rules that keep every device and CPU ISA bit-identical: one
eager kernel per rounded operation, no fused multiply-add (no `lerp`, `addcmul`,
`add(alpha=)`), no `torch.compile`, integers wherever Pillow uses integers.
"""
