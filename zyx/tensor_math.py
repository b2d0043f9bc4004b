"""Elementwise math composed from the primitives: inverse trigonometric and hyperbolic functions, atan2, hypot,
log10, logit, xlogy, the remainder family (fmod, div rounding modes, scalar % tensor), copysign, logaddexp,
nan_to_num and isclose.

Functions the primitives lack (atan, log1p) are built from accurate approximations, so gradients are the
approximations' own derivatives (float32 round-off, float64 to ~1e-15 relative). Of half tensors they are computed
in float32 and rounded once (`Tensor._in_float32`), as PyTorch computes them. Branches pick their input
with a `where` before a risky op as well as after it, so the branch not taken cannot put nan into a gradient.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np

from .dtypes import float64, promote

if TYPE_CHECKING:
    from .tensor import Operand, Tensor

# Cephes' atan.c (double precision): atan(x) = x + x z P(z) / Q(z), z = x**2, on |x| <= 0.66 after reduction
_ATAN_P = (-8.750608600031904122785e-1, -1.615753718733365076637e1, -7.500855792314704667340e1,
           -1.228866684490136173410e2, -6.485021904942025371773e1)
_ATAN_Q = (2.485846490142306297962e1, 1.650270098316988542046e2, 4.328810604912902668951e2,
           4.853903996359136964868e2, 1.945506571482613964425e2)
_TAN_3PI_8 = 2.41421356237309504880
_ATAN_MOREBITS = 6.123233995736765886130e-17  # pi/2 - float64(pi/2)
_LARGE = 2.0 ** 28  # above this, sqrt(x**2 + 1) is |x| to double precision, and x**2 is kept from overflowing


def _polynomial(x: "Tensor", coefficients: tuple[float, ...], leading: Optional[float] = None) -> "Tensor":
    """Horner's rule, highest power first; `leading` is an extra first coefficient (1.0 for a monic Q)."""
    result: Any = leading if leading is not None else coefficients[0]
    for c in coefficients if leading is not None else coefficients[1:]:
        result = x * result + c
    return result


def _negative(x: "Tensor") -> "Tensor":
    """True where x < 0, -0.0 included (1 / -0.0 is -inf); False for nan."""
    return (x < 0) | ((x == 0) & (1 / x < 0))


def _mirror(x: "Tensor", odd_function: Callable[["Tensor"], "Tensor"]) -> "Tensor":
    """An odd function from its half on x >= 0: the |x| it is given has gradient 1 at 0 (not abs's 0), and -0.0
    gives -0.0 (as numpy's and PyTorch's)."""
    negative = _negative(x)
    magnitude = negative.where(-x, x)
    value = odd_function(magnitude)
    return negative.where(-value, value)


def _atan_positive(a: "Tensor") -> "Tensor":
    """atan on a >= 0 by Cephes' reduction to |r| <= 0.66: a > tan(3pi/8) uses pi/2 + atan(-1/a), a > 0.66
    uses pi/4 + atan((a - 1)/(a + 1))."""
    big = a > _TAN_3PI_8
    mid = (a > 0.66) & big.logical_not()
    reduced = big.where(-1 / big.where(a, 1.0), mid.where((mid.where(a, 0.0) - 1) / (mid.where(a, 0.0) + 1), a))
    offset = big.where(a._full(a.shape, math.pi / 2, a.dtype), mid.where(a._full(a.shape, math.pi / 4, a.dtype), 0.0))
    extra = big.where(a._full(a.shape, 0.5 * _ATAN_MOREBITS, a.dtype),
                      mid.where(a._full(a.shape, 0.25 * _ATAN_MOREBITS, a.dtype), 0.0))
    z = reduced * reduced
    series = reduced * z * _polynomial(z, _ATAN_P) / _polynomial(z, _ATAN_Q, leading=1.0)
    return offset + (series + extra + reduced)


def _signed(x: "Tensor", magnitude: float) -> "Tensor":
    """`magnitude` with x's sign (-0.0 counting as negative), in x's dtype; a constant (no gradient)."""
    return x._full((), magnitude, x.dtype).copysign(x)


def _atan2(y: "Tensor", x: "Tensor") -> "Tensor":
    """atan2 of floats: atan of the ratio of the smaller to the larger magnitude (|ratio| <= 1, where atan is
    accurate), then moved to its quadrant. Signed ratios make the gradient the ratio's own (x / r**2 and
    -y / r**2). Two zeros or two infinities stand for the unit vector of their signs (so atan2(-0, -0) = -pi
    and atan2(inf, -inf) = 3pi/4, with gradient 0), and each branch divides only by what it picked."""
    steep = y.abs() > x.abs()  # the angle is pi/2 - atan(x / y) off the y axis
    special = (x.isinf() & y.isinf()) | ((x == 0) & (y == 0))
    flat_x = special.where(_signed(x, 1.0), steep.where(1.0, x))
    flat_y = special.where(y.isinf().where(_signed(y, 1.0), y.detach()), steep.where(0.0, y))
    ratio = flat_y / flat_x
    flat = (ratio == 0).where(ratio, ratio.atan())  # keeps the zero's sign (and atan's slope 1 there)
    flat = _negative(x).where(flat + _signed(y, math.pi), flat)
    upright = _signed(y, math.pi / 2) - (steep.where(x, 0.0) / steep.where(y, 1.0)).atan()
    return steep.where(upright, flat)


def _hypot(x: "Tensor", y: "Tensor") -> "Tensor":
    """sqrt(x**2 + y**2) as big * sqrt(1 + (small / big)**2) of the magnitudes: no overflow or underflow in the
    squares; 0 at (0, 0) and inf where either is infinite (nan beside it too, as C's hypot), each with gradient
    0. Ties share |x| and |y|'s gradients, which still sum to x / hypot and y / hypot."""
    ax, ay = x.abs(), y.abs()
    big, small = ax.maximum(ay), ax.minimum(ay)
    infinite, zero = x.isinf() | y.isinf(), big == 0
    plain = (infinite | zero | big.isnan()).logical_not()
    ratio = plain.where(small, 0.0) / plain.where(big, 1.0)
    value = big * (ratio * ratio + 1).sqrt()
    return infinite.where(math.inf, zero.where(0.0, value))


# ---- special functions: differentiable compositions (gradients of every order are the approximations' own) --
# Cephes' ndtr.c erfc (double precision): erfc(x) = exp(-x**2) P(x) / Q(x) on 1 <= x < 8, R / S from 8 on
_ERFC_P = (2.46196981473530512524e-10, 5.64189564831068821977e-1, 7.46321056442269912687e0,
           4.86371970985681366614e1, 1.96520832956077098242e2, 5.26445194995477358631e2,
           9.34528527171957607540e2, 1.02755188689515710272e3, 5.57535335369399327526e2)
_ERFC_Q = (1.32281951154744992508e1, 8.67072140885989742329e1, 3.54937778887819891062e2,
           9.75708501743205489753e2, 1.82390916687909736289e3, 2.24633760818710981792e3,
           1.65666309194161350182e3, 5.57535340817727675546e2)
_ERFC_R = (5.64189583547755073984e-1, 1.27536670759978104416e0, 5.01905042251180477414e0,
           6.16021097993053585195e0, 7.40974269950448939160e0, 2.97886665372100240670e0)
_ERFC_S = (2.26052863220117276590e0, 9.39603524938001434673e0, 1.20489539808096656605e1,
           1.70814450747565897222e1, 9.60896809063285878198e0, 3.36907645100081516050e0)
# Giles, "Approximating the erfinv function" (GPU Computing Gems), single precision: central and tail
_ERFINV_CENTRAL = (2.81022636e-08, 3.43273939e-07, -3.5233877e-06, -4.39150654e-06, 0.00021858087,
                   -0.00125372503, -0.00417768164, 0.246640727, 1.50140941)
_ERFINV_TAIL = (-0.000200214257, 0.000100950558, 0.00134934322, -0.00367342844, 0.00573950773,
                -0.0076224613, 0.00943887047, 1.00167406, 2.83297682)
_SHIFT = 10.0  # digamma, trigamma and lgamma recur up to x >= 10, then sum their asymptotic series
_TWO_OVER_SQRT_PI = 2 / math.sqrt(math.pi)


def _exp_minus_square(a: "Tensor") -> "Tensor":
    """exp(-a**2) without a**2's rounding error: a = m + f with m a multiple of 1/128 (m**2 is exact). m is flat
    (round), so the gradient is f's: exp(-a**2) (-2m - 2f), exactly -2a exp(-a**2)."""
    m = (a * 128).round() / 128
    f = a - m
    return (-(m * m)).exp() * (-(f * (m * 2 + f))).exp()


def _erfc_positive(a: "Tensor") -> "Tensor":
    """erfc on a >= 0 by Cephes' branches: 1 - erf(a) below 1, exp(-a**2) times a rational function above."""
    near = a < 1
    far = a >= 8
    t = (near | a.isinf()).where(1.0, a)
    ratio = far.where(_polynomial(t, _ERFC_R) / _polynomial(t, _ERFC_S, leading=1.0),
                      _polynomial(t, _ERFC_P) / _polynomial(t, _ERFC_Q, leading=1.0))
    return near.where(1 - a.erf(), a.isinf().where(0.0, _exp_minus_square(t) * ratio))


def _erfinv(x: "Tensor") -> "Tensor":
    """Giles' approximation, refined by Newton steps (on erf near 0, on log erfc near +-1, where 1 - |x| is
    exact): three in float64, one in float32, whose derivative is 1 / erf'(y) to the step's residual. +-1 ->
    +-inf, nan outside [-1, 1]; the inputs outside (-1, 1) are replaced before any log."""
    def positive(magnitude: "Tensor") -> "Tensor":
        a = (magnitude < 1).where(magnitude, 0.5)
        w = -((1 - a) * (1 + a)).log()
        central = w < 5
        y = central.where(_polynomial(central.where(w, 2.5) - 2.5, _ERFINV_CENTRAL),
                          _polynomial(central.where(6.25, w).sqrt() - 3, _ERFINV_TAIL)) * a
        near = a <= 0.5  # the tail's steps are on log erfc, which is nearly quadratic in y
        for _ in range(3 if x.dtype == float64 else 1):
            slope, tail = _exp_minus_square(y) * _TWO_OVER_SQRT_PI, _erfc_positive(y)
            y = y - near.where((y.erf() - a) / slope, ((1 - a).log() - tail.log()) * tail / slope)
        return (magnitude == 1).where(math.inf, (magnitude > 1).where(math.nan, y))
    return x.isnan().where(x, _mirror(x, positive))


def _shifted(x: "Tensor", term: Callable[["Tensor"], "Tensor"]) -> tuple["Tensor", "Tensor"]:
    """(x raised past _SHIFT by whole steps, the sum of term(x + k) over the steps k taken), for x >= 0."""
    steps = (_SHIFT - x).ceil().maximum(0.0)
    total: Any = 0.0
    for k in range(int(_SHIFT)):
        total = total + (steps > k).where(term((steps > k).where(x + k, 1.0)), 0.0)
    return x + steps, total


def _digamma(x: "Tensor") -> "Tensor":
    """psi(x): reflection below 0 (pi / tan(pi r) of the fractional part r), recurrence, asymptotic series.
    -inf at +0 (inf at -0), nan at the negative integers, as torch. Poles, zeros, infinities and nan are
    replaced before the series, so their branches put no nan into gradients."""
    negative = x < 0
    pole = negative & (x == x.trunc())
    special = pole | (x == 0) | x.isinf() | x.isnan()
    safe = special.where(_SHIFT, x)
    reflected = negative & special.logical_not()
    r = reflected.where(safe - safe.trunc(), 0.5)
    a = reflected.where(1 - safe, safe)
    big, recurred = _shifted(a, lambda t: 1 / t)
    z = 1 / (big * big)
    series = z * _polynomial(z, (-1 / 12, 691 / 32760, -1 / 132, 1 / 240, -1 / 252, 1 / 120, -1 / 12))
    value = big.log() - 0.5 / big + series - recurred
    value = reflected.where(value - math.pi / (r * math.pi).tan(), value)
    value = (x == 0).where(-_signed(x, math.inf), value)
    value = (x == math.inf).where(math.inf, value)
    return (pole | x.isnan() | (x == -math.inf)).where(math.nan, value)


def _lgamma(x: "Tensor") -> "Tensor":
    """log|Gamma(x)|: reflection below 0.5 (log(pi / |sin(pi x)|) - lgamma(1 - x)), recurrence and Stirling's
    series; inf at the poles (0 and the negative integers) and at +-inf. Its gradient, the series' derivative,
    is digamma; poles, infinities and nan are replaced before the series."""
    infinite = x.isinf() | ((x < 0.5) & (x == x.round()))
    special = infinite | x.isnan()
    safe = special.where(_SHIFT, x)
    reflected = safe < 0.5
    a = reflected.where(1 - safe, safe)
    big, logs = _shifted(a, lambda t: t.log())
    z = 1 / (big * big)
    series = _polynomial(z, (1 / 156, -691 / 360360, 1 / 1188, -1 / 1680, 1 / 1260, -1 / 360, 1 / 12)) / big
    value = (big - 0.5) * big.log() - big + 0.5 * math.log(2 * math.pi) + series - logs
    sine = ((safe - safe.round()) * math.pi).sin().abs()
    value = reflected.where((math.pi / reflected.where(sine, 1.0)).log() - value, value)
    return x.isnan().where(x, infinite.where(math.inf, value))


class MathMixin:
    """Tensor's inverse trigonometric, hyperbolic, remainder and closeness methods."""

    __slots__ = ()

    # ---- inverse trigonometric -----------------------------------------------------------------------------
    def atan(self: "Tensor") -> "Tensor":
        """Arctangent (Cephes' rational approximation: full float32 and float64 precision)."""
        return self._in_float32(lambda x: _mirror(x, _atan_positive))

    def asin(self: "Tensor") -> "Tensor":
        """Arcsine as atan(x / sqrt((1 - x)(1 + x))); nan outside [-1, 1]."""
        return self._in_float32(lambda x: (x / ((1 - x) * (1 + x)).sqrt()).atan())

    def acos(self: "Tensor") -> "Tensor":
        """Arccosine as 2 atan(sqrt((1 - x) / (1 + x))), accurate near both ends; nan outside [-1, 1]."""
        return self._in_float32(lambda x: ((1 - x) / (1 + x)).sqrt().atan() * 2)

    arcsin, arccos, arctan = asin, acos, atan

    def atan2(self: "Tensor", other: "Operand") -> "Tensor":
        """The angle of the point (other, self) in (-pi, pi], as torch.atan2(input, other): self is y, other x.
        Signed zeros and infinities give C's answers (atan2(+-0, -0) = +-pi, atan2(+-inf, -inf) = +-3pi/4);
        integers are computed in float32."""
        return self._in_float32(_atan2, self._operand(other, "atan2"))

    arctan2 = atan2

    def hypot(self: "Tensor", other: "Operand") -> "Tensor":
        """sqrt(self**2 + other**2) without overflow or underflow (torch.hypot); inf if either is infinite."""
        return self._in_float32(_hypot, self._operand(other, "hypot"))

    # ---- special functions ---------------------------------------------------------------------------------
    def erfc(self: "Tensor") -> "Tensor":
        """1 - erf(x), accurate in the tail (Cephes' rational approximation: erfc(10) is 2.1e-45, not 0); 2 -
        erfc(-x) below 0. Its gradients are the approximation's own."""
        def erfc(x: "Tensor") -> "Tensor":
            negative = _negative(x)
            value = _erfc_positive(negative.where(-x, x))
            return negative.where(2 - value, value)
        return self._in_float32(erfc)

    def erfinv(self: "Tensor") -> "Tensor":
        """The inverse of erf on [-1, 1] (Giles' approximation, Newton-refined); +-1 -> +-inf, nan outside.
        The gradient at +-1 is 0 (torch's is inf)."""
        return self._in_float32(_erfinv)

    def lgamma(self: "Tensor") -> "Tensor":
        """log |Gamma(x)| (Stirling's series after recurrence, reflection below 0.5); inf at the poles."""
        return self._in_float32(_lgamma)

    def digamma(self: "Tensor") -> "Tensor":
        """The derivative of lgamma (asymptotic series after recurrence, reflection below 0): -inf at +0, nan
        at the negative integers, as torch; its gradient is the series' own derivative (trigamma)."""
        return self._in_float32(_digamma)

    psi = digamma

    # ---- hyperbolic ----------------------------------------------------------------------------------------
    def _exp_halves(self: "Tensor") -> tuple["Tensor", "Tensor"]:
        """(exp(x) / 2, exp(-x) / 2) as (e/2) e with e = exp(x/2): finite as long as cosh is."""
        grow, shrink = (self * 0.5).exp(), (self * -0.5).exp()
        return grow * 0.5 * grow, shrink * 0.5 * shrink

    def cosh(self: "Tensor") -> "Tensor":
        """(exp(x) + exp(-x)) / 2, finite up to where cosh itself overflows."""
        def cosh(x: "Tensor") -> "Tensor":
            grow, shrink = x._exp_halves()
            return grow + shrink
        return self._in_float32(cosh)

    def sinh(self: "Tensor") -> "Tensor":
        """(exp(x) - exp(-x)) / 2, and tanh(x) cosh(x) below |x| = 1, where the difference would cancel."""
        def sinh(x: "Tensor") -> "Tensor":
            small = x.abs() < 1
            inner = small.where(x, 0.0)
            grow, shrink = x._exp_halves()
            return small.where(inner.tanh() * inner.cosh(), grow - shrink)
        return self._in_float32(sinh)

    def asinh(self: "Tensor") -> "Tensor":
        """log(x + sqrt(x**2 + 1)) as log1p(x + x**2 / (1 + sqrt(1 + x**2))), accurate near 0 and without
        overflow for large |x| (log(2|x|) there)."""
        def positive(a: "Tensor") -> "Tensor":
            big = a > _LARGE
            low, high = big.where(0.0, a), big.where(a, 1.0)
            near = (low + low * low / ((low * low + 1).sqrt() + 1)).log1p()
            return big.where(high.log() + math.log(2), near)
        return self._in_float32(lambda x: _mirror(x, positive))

    def acosh(self: "Tensor") -> "Tensor":
        """log(x + sqrt(x**2 - 1)) as log1p(t + sqrt(2t + t**2)) with t = x - 1, accurate near 1; nan below 1."""
        def acosh(x: "Tensor") -> "Tensor":
            big = x > _LARGE
            t, high = big.where(0.0, x - 1), big.where(x, 1.0)
            return big.where(high.log() + math.log(2), (t + (t * 2 + t * t).sqrt()).log1p())
        return self._in_float32(acosh)

    def atanh(self: "Tensor") -> "Tensor":
        """log((1 + x) / (1 - x)) / 2 as log1p(2x / (1 - x)) / 2; +-inf at +-1, nan beyond."""
        return self._in_float32(lambda x: _mirror(x, lambda a: (a * 2 / (1 - a)).log1p() * 0.5))

    arcsinh, arccosh, arctanh = asinh, acosh, atanh

    def log10(self: "Tensor") -> "Tensor":
        """Base-10 logarithm."""
        return self._in_float32(lambda x: x.log() * (1 / math.log(10)))

    def logit(self: "Tensor", eps: Optional[float] = None) -> "Tensor":
        """log(p / (1 - p)), the inverse of sigmoid; with `eps`, p is clamped to [eps, 1 - eps] first (and its
        gradient is 0 outside, as torch.logit's). Without it, nan outside [0, 1] and +-inf at the ends."""
        def logit(p: "Tensor") -> "Tensor":
            if eps is not None:
                p = p.clamp(eps, 1 - eps)
            return (p / (1 - p)).log()
        return self._in_float32(logit)

    def xlogy(self: "Tensor", other: "Operand") -> "Tensor":
        """self * log(other), 0 where self is 0 (unless other is nan), as torch.xlogy: the convention of
        entropies and KL divergences, where 0 * log(0) counts as 0. The gradients are torch's: log(other) for
        self (at self = 0 too), 0 where self = 0 and other <= 0 (the log sees 1 there, so no nan leaks)."""
        def xlogy(x: "Tensor", y: "Tensor") -> "Tensor":
            special = (x == 0) & ((y <= 0) | (y == math.inf))  # where x * log(y) would be nan
            return special.where(0.0, x * special.where(1.0, y).log())
        return self._in_float32(xlogy, self._operand(other, "xlogy"))

    def nan_to_num(self: "Tensor", nan: float = 0.0, posinf: Optional[float] = None,
                   neginf: Optional[float] = None) -> "Tensor":
        """nan, +inf and -inf replaced by `nan`, `posinf` and `neginf` (by default 0 and the dtype's largest and
        smallest finite values), as torch.nan_to_num; integer and bool tensors come back as they are. The
        gradient passes where the value was finite, 0 elsewhere."""
        if not self.dtype.is_float:
            return self
        info = np.finfo(self.dtype.np)
        high = float(info.max) if posinf is None else posinf
        low = float(info.min) if neginf is None else neginf
        fill = self._full((), nan, self.dtype)
        return self.isnan().where(fill, (self == math.inf).where(high, (self == -math.inf).where(low, self)))

    # ---- remainders and rounding division ------------------------------------------------------------------
    def fmod(self: "Tensor", other: "Operand") -> "Tensor":
        """C's fmod: the remainder of division rounded toward zero, with the sign of the dividend (as
        torch.fmod). For floats it is a - trunc(a / b) b of the rounded quotient (see __floordiv__)."""
        b = self._operand(other, "fmod")
        if promote(self.dtype, b.dtype).is_float:
            return self - self.div(b, rounding_mode="trunc") * b
        remainder = self % b  # sign of the divisor; move it to the dividend's side where they differ
        return ((remainder != 0) & ((remainder < 0) != (self < 0))).where(remainder - b, remainder)

    def remainder(self: "Tensor", other: "Operand") -> "Tensor":
        """Python's %: the remainder of floor division, with the sign of the divisor."""
        return self % other

    def __rmod__(self: "Tensor", other: "Operand") -> "Tensor":
        return self._operand(other, "mod") % self

    def div(self: "Tensor", other: "Operand", rounding_mode: Optional[str] = None) -> "Tensor":
        """Division as torch.div: true division (rounding_mode=None), 'trunc' (toward zero) or 'floor'.
        Integer operands stay integer under 'trunc' and 'floor'."""
        if rounding_mode is None:
            return self / other
        if rounding_mode == "floor":
            return self // other
        if rounding_mode != "trunc":
            raise ValueError(f"div: rounding_mode must be None, 'trunc' or 'floor', got {rounding_mode!r}")
        b = self._operand(other, "div")
        if promote(self.dtype, b.dtype).is_float:
            return (self / b).trunc()
        floor = self // b  # one above the truncated quotient where the exact quotient is negative and inexact
        inexact = (floor * b) != self
        return (inexact & ((self < 0) != (b < 0))).where(floor + 1, floor)

    divide = div

    def copysign(self: "Tensor", other: "Operand") -> "Tensor":
        """|self| with the sign of `other` (-0.0 counts as negative, as torch.copysign); always float."""
        magnitude = self._float().abs()
        negative = _negative(self._operand(other, "copysign")._float())
        return negative.where(-magnitude, magnitude)

    def logaddexp(self: "Tensor", other: "Operand") -> "Tensor":
        """log(exp(a) + exp(b)) as max(a, b) + log1p(exp(-|a - b|)): no overflow, and two equal infinities
        give that infinity (with the gradient shared, as at any tie)."""
        def logaddexp(a: "Tensor", b: "Tensor") -> "Tensor":
            peak = a.maximum(b)
            same_infinity = (a == b) & peak.isinf()
            gap = same_infinity.where(0.0, -(a - b).abs())
            return same_infinity.where(peak, peak + gap.exp().log1p())
        return self._in_float32(logaddexp, self._operand(other, "logaddexp"))

    def logaddexp2(self: "Tensor", other: "Operand") -> "Tensor":
        """log2(2**a + 2**b)."""
        scale = math.log(2)
        return self._in_float32(lambda a, b: (a * scale).logaddexp(b * scale) / scale,
                                self._operand(other, "logaddexp2"))

    # ---- closeness -----------------------------------------------------------------------------------------
    def isclose(self: "Tensor", other: "Operand", rtol: float = 1e-5, atol: float = 1e-8,
                equal_nan: bool = False) -> "Tensor":
        """|self - other| <= atol + rtol |other| elementwise (bool), as torch.isclose: equal infinities are
        close, nan is close to nan only with `equal_nan`."""
        b = self._operand(other, "isclose")
        dtype = promote(self.dtype, b.dtype)
        if dtype.is_bool:
            return self == b
        exact = dtype if dtype.is_float else float64  # integers compare in float64 (exact below 2**53)
        a, b = self.cast(exact), b.cast(exact)
        close = (a == b) | (((a - b).abs() <= b.abs() * rtol + atol) & (a - b).isfinite())
        return close | (a.isnan() & b.isnan()) if equal_nan else close

    def allclose(self: "Tensor", other: "Operand", rtol: float = 1e-5, atol: float = 1e-8,
                 equal_nan: bool = False) -> bool:
        """Whether every element is close (see isclose); realizes the answer."""
        return bool(self.isclose(other, rtol, atol, equal_nan).all().item())

