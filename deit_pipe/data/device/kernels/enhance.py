"""`PIL.ImageEnhance` (Color, Contrast, Brightness, Sharpness) as batched kernels,
bit-identical to Pillow.

Every enhancer is `Image.blend(degenerate, image, factor)`, i.e. `ImagingBlend`
(`src/libImaging/Blend.c`): alpha is the factor cast to float32 and
`out = (UINT8)(in1 + alpha * (in2 - in1))` in float32, clipped to 0..255 when alpha is
outside [0, 1]. The float32 multiply and the add are separate kernels (an FMA changes the
rounding). The degenerate images are integer:

- Color: `convert("L")` (`rgb2l` in `Convert.c`: `(19595 R + 38470 G + 7471 B + 0x8000)
  >> 16`) back to RGB;
- Contrast: a flat image of `int(ImageStat mean of L + 0.5)` = `(2 S + N) // (2 N)`;
- Brightness: black;
- Sharpness: `filter(SMOOTH)` (`ImagingFilter3x3` in `Filter.c`, kernel 1 1 1 / 1 5 1 /
  1 1 1 over 13, float32 plus 0.5, truncated): the float32 sum always lands at least 1/26
  away from an integer, so it equals the integer `(2 S + 13) // 26`; the outer rows and
  columns are copied, and images under 3x3 are copied whole (`ImagingFilter`).

Images are uint8 [n, H, W, 3]; factors are per view, shape [n] (Python floats, float64 or
float32 tensors: they are rounded to float32 exactly as Pillow's `float alpha` argument).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "blend",
    "brightness",
    "color",
    "contrast",
    "desaturate_factor",
    "grayscale",
    "sharpness",
    "smooth",
]

Factors = torch.Tensor | Sequence[float] | float


def _alpha(factor: Factors, n: int, device: torch.device) -> torch.Tensor:
    """Per-view float32 alpha [n, 1, 1, 1]; float64 -> float32 rounds to nearest, like C."""
    t = torch.as_tensor(factor, dtype=torch.float64).to(torch.float32)
    t = t.to(device, non_blocking=True)
    return t.expand(n).reshape(n, 1, 1, 1) if t.dim() == 0 else t.reshape(n, 1, 1, 1)


def blend(in1: torch.Tensor, in2: torch.Tensor, factor: Factors) -> torch.Tensor:
    """`Image.blend(in1, in2, factor)` per view (`ImagingBlend`): uint8 out."""
    alpha = _alpha(factor, in2.shape[0], in2.device)
    a = in1.to(torch.float32)
    diff = (in2.to(torch.int16) - in1.to(torch.int16)).to(torch.float32)  # exact
    v = torch.mul(diff, alpha)  # float32 product, rounded on its own ...
    v = torch.add(v, a)  # ... then the float32 sum: no fused multiply-add
    # Inside [0, 1] the sum stays in [0, 255]; outside, Pillow clips, then truncates.
    return v.clamp_(0.0, 255.0).to(torch.uint8)


def grayscale(imgs: torch.Tensor) -> torch.Tensor:
    """`convert("L")` of RGB: uint8 [n, H, W] (ITU-R 601-2 in 16.16 fixed point)."""
    x = imgs.to(torch.int32)
    acc = x[..., 0] * 19595 + x[..., 1] * 38470 + x[..., 2] * 7471 + 0x8000
    return torch.bitwise_right_shift(acc, 16).to(torch.uint8)


def color(imgs: torch.Tensor, factor: Factors) -> torch.Tensor:
    """`ImageEnhance.Color(img).enhance(factor)`: blend from the L image as RGB."""
    gray = grayscale(imgs)[..., None].expand_as(imgs)
    return blend(gray, imgs, factor)


def contrast(imgs: torch.Tensor, factor: Factors) -> torch.Tensor:
    """`ImageEnhance.Contrast(img).enhance(factor)`: blend from a flat image at the rounded
    mean of L, `int(S / N + 0.5)` = `(2 S + N) // (2 N)` (a double cannot cross an integer
    there: the gap is at least 1 / (2 N))."""
    n, h, w, _ = imgs.shape
    s = grayscale(imgs).to(torch.int64).reshape(n, -1).sum(dim=1)
    count = h * w
    mean = torch.div(2 * s + count, 2 * count, rounding_mode="floor").to(torch.uint8)
    return blend(mean.reshape(n, 1, 1, 1).expand_as(imgs), imgs, factor)


def brightness(imgs: torch.Tensor, factor: Factors) -> torch.Tensor:
    """`ImageEnhance.Brightness(img).enhance(factor)`: blend from black."""
    return blend(torch.zeros_like(imgs), imgs, factor)


def smooth(imgs: torch.Tensor) -> torch.Tensor:
    """`img.filter(ImageFilter.SMOOTH)` per view (see the module docstring)."""
    n, h, w, c = imgs.shape
    if h < 3 or w < 3:
        return imgs.clone()
    x = imgs.to(torch.int32)
    rows = x[:, :-2] + x[:, 1:-1] + x[:, 2:]  # vertical 3-sums, [n, H-2, W, C]
    s = rows[:, :, :-2] + rows[:, :, 1:-1] + rows[:, :, 2:] + 4 * x[:, 1:-1, 1:-1]
    out = imgs.clone()
    out[:, 1:-1, 1:-1] = torch.div(2 * s + 13, 26, rounding_mode="floor").to(torch.uint8)
    return out


def sharpness(imgs: torch.Tensor, factor: Factors) -> torch.Tensor:
    """`ImageEnhance.Sharpness(img).enhance(factor)`: blend from the SMOOTH image."""
    return blend(smooth(imgs), imgs, factor)


def desaturate_factor(level_arg: float) -> float:
    """timm's `desaturate(img, factor)` is `color` with this factor (host, float64)."""
    return min(1.0, max(0.0, 1.0 - level_arg))
