"""Every auto-augment op in one table (`OPS`), keyed by timm's name, as timm keeps
`NAME_TO_OP` and `LEVEL_TO_ARG` side by side: how its arguments are drawn from a magnitude
(timm's level-to-arg, its coin flips from the view's generator), how Pillow applies it on
the host (timm's aug_fn) and which device kernel applies it (`DeviceOp`, or None: such a
view renders on the host). Adding or upgrading an op touches its entry alone;
`test_every_op_of_the_table_draws_renders_and_runs_as_timm` walks the table.

The kernels are named, not imported: this room (views) does not reach into the device's;
`data/device/augsteps.py` resolves the names in `data/device/kernels/`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image
from timm.data import auto_augment as timm_aa

_LEVEL = timm_aa._LEVEL_DENOM

Args = Callable[[float, dict, random.Random], tuple]


@dataclass(frozen=True)
class DeviceOp:
    """The kernel of an op: `fn` ("module.function" in data/device/kernels) and how it takes
    the op's argument: "none", "int", "float" (through `convert` when given) or "matrix"
    (`fn` builds the inverse affine matrix from the argument and the view's w, h)."""

    fn: str
    arg: str = "none"
    convert: str | None = None


@dataclass(frozen=True)
class Op:
    """One auto-augment op: its argument draw, its Pillow apply, its kernel. `redraw` turns
    a drawn op into the one applied (GaussianBlurRand draws its radius inside timm's
    aug_fn)."""

    args: Args
    host: Callable[..., Image.Image]
    device: DeviceOp | None
    redraw: Callable[[tuple, random.Random], tuple[str, tuple]] | None = None

    @property
    def affine(self) -> bool:
        """Whether it is an affine op, which takes timm's resample filter (drawn when it is
        a list) and whose kernel builds a matrix."""
        return self.device is not None and self.device.arg == "matrix"


def _negate(py: random.Random, v: float) -> float:
    return -v if py.random() > 0.5 else v


def _none(level: float, hp: dict, py: random.Random) -> tuple:
    return ()


def _scaled(top: float) -> Args:
    """level / 10 × `top`, randomly negated: rotate, shear."""
    return lambda level, hp, py: (_negate(py, (level / _LEVEL) * top),)


def _translate_const(level: float, hp: dict, py: random.Random) -> tuple:
    return (_negate(py, (level / _LEVEL) * float(hp["translate_const"])),)


def _translate_pct(level: float, hp: dict, py: random.Random) -> tuple:
    return (_negate(py, (level / _LEVEL) * hp.get("translate_pct", 0.45)),)


def _enhance(level: float, hp: dict, py: random.Random) -> tuple:
    return ((level / _LEVEL) * 1.8 + 0.1,)


def _enhance_increasing(level: float, hp: dict, py: random.Random) -> tuple:
    return (max(0.1, 1.0 + _negate(py, (level / _LEVEL) * 0.9)),)


def _int_arg(fn: Callable[[float], int]) -> Args:
    return lambda level, hp, py: (fn(level / _LEVEL),)


def _minmax(lo: float, hi: float) -> Args:
    return lambda level, hp, py: (max(lo, min(hi, lo + (hi - lo) * (level / _LEVEL))),)


def posterize(img: Image.Image, bits_to_keep: int, **kwargs) -> Image.Image:
    """timm's posterize, Pillow-proof: Pillow >= 13 refuses 0 bits, which historically meant
    an all-black image and which `inc1` RandAugment reaches at magnitude 10."""
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return timm_aa.posterize(img, bits_to_keep, **kwargs)


def _blur_radius(args: tuple, py: random.Random) -> tuple[str, tuple]:
    return "GaussianBlur", (py.uniform(0.1, 2.0 * args[0]),)


def _affine(args: Args, host: Callable[..., Image.Image], matrix: str) -> Op:
    """An affine op: its kernel builds the inverse matrix `affine.<matrix>` for the view."""
    return Op(args, host, DeviceOp("affine." + matrix, "matrix"))


_T = timm_aa
_POINT, _ENH = "pointops.", "enhance."
_POSTERIZE, _SOLARIZE = DeviceOp(_POINT + "posterize", "int"), DeviceOp(_POINT + "solarize", "int")
OPS: dict[str, Op] = {
    "AutoContrast": Op(_none, _T.auto_contrast, DeviceOp(_POINT + "autocontrast")),
    "Equalize": Op(_none, _T.equalize, DeviceOp(_POINT + "equalize")),
    "Invert": Op(_none, _T.invert, DeviceOp(_POINT + "invert")),
    "Rotate": _affine(_scaled(30.0), _T.rotate, "rotate_op"),
    "Posterize": Op(_int_arg(lambda f: int(f * 4)), posterize, _POSTERIZE),
    "PosterizeIncreasing": Op(_int_arg(lambda f: 4 - int(f * 4)), posterize, _POSTERIZE),
    "PosterizeOriginal": Op(_int_arg(lambda f: int(f * 4) + 4), posterize, _POSTERIZE),
    "Solarize": Op(_int_arg(lambda f: min(256, int(f * 256))), _T.solarize, _SOLARIZE),
    "SolarizeIncreasing": Op(
        _int_arg(lambda f: 256 - min(256, int(f * 256))),
        _T.solarize,
        _SOLARIZE,
    ),
    "SolarizeAdd": Op(
        _int_arg(lambda f: min(128, int(f * 110))),
        _T.solarize_add,
        DeviceOp(_POINT + "solarize_add", "int"),
    ),
    "Desaturate": Op(
        _minmax(0.5, 1.0),
        _T.desaturate,
        DeviceOp(_ENH + "color", "float", convert=_ENH + "desaturate_factor"),
    ),
    "GaussianBlur": Op(_minmax(0.1, 2.0), _T.gaussian_blur, None),
    "GaussianBlurRand": Op(_minmax(0.0, 1.0), _T.gaussian_blur_rand, None, redraw=_blur_radius),
    "ShearX": _affine(_scaled(0.3), _T.shear_x, "shear_x_op"),
    "ShearY": _affine(_scaled(0.3), _T.shear_y, "shear_y_op"),
    "TranslateX": _affine(_translate_const, _T.translate_x_abs, "translate_x_op"),
    "TranslateY": _affine(_translate_const, _T.translate_y_abs, "translate_y_op"),
    "TranslateXRel": _affine(_translate_pct, _T.translate_x_rel, "translate_x_rel_op"),
    "TranslateYRel": _affine(_translate_pct, _T.translate_y_rel, "translate_y_rel_op"),
}
for _name, _host in (
    ("Color", _T.color),
    ("Contrast", _T.contrast),
    ("Brightness", _T.brightness),
    ("Sharpness", _T.sharpness),
):
    _kernel = DeviceOp(_ENH + _name.lower(), "float")
    OPS[_name] = Op(_enhance, _host, _kernel)
    OPS[f"{_name}Increasing"] = Op(_enhance_increasing, _host, _kernel)
