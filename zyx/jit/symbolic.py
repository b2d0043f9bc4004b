"""Integer index expressions with range-aware simplification.

A view chain becomes index arithmetic on the kernel's loop variables; these rules turn the divisions and
modulos that reshapes introduce back into plain sums wherever the ranges allow, so a contiguous access is
rendered as `gid` rather than `(gid/64)%32*64 + gid%64`.

An expression is a linear combination `const + sum(coefficient * atom)` where an atom is a variable, a
floor division or a modulo of another expression by a positive constant.
"""
from __future__ import annotations

import math
from typing import Union


class Atom:
    """A variable, `expr // k`, `expr % k`, `min(expr, k)`, or a `clamped` expression (known to lie in [lo, hi]
    wherever its value is used, e.g. an index inside a padding guard); ranges are inclusive."""

    __slots__ = ("kind", "name", "expr", "k", "lo", "hi", "_key")

    def __init__(self, kind: str, lo: int, hi: int, name: str = "", expr: "Expr | None" = None, k: int = 0):
        self.kind, self.name, self.expr, self.k, self.lo, self.hi = kind, name, expr, k, lo, hi
        self._key = (kind, name, expr.key if expr is not None else None, k, lo, hi)  # ranges too: memo keys

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Atom) and self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    def render(self) -> str:
        if self.kind == "var":
            return self.name
        if self.kind == "clamped":
            return self.expr.render()  # type: ignore[union-attr]
        if self.kind == "min":  # a select, which OpenCL C and WGSL both have: PoCL 3.1 kept an integer `min` of
            # loop-invariant values inside the loop (a CPU product reading its rows clamped ran 1.4x slower)
            inner = self.expr.render()  # type: ignore[union-attr]
            return f"select({self.k},{inner},({inner}<{self.k}))"
        op = "/" if self.kind == "div" else "%"
        return f"({self.expr.render()}{op}{self.k})"  # type: ignore[union-attr]


class Expr:
    __slots__ = ("const", "terms", "_key", "_text")

    def __init__(self, const: int = 0, terms: dict[Atom, int] | None = None):
        self.const = const
        self.terms = {a: c for a, c in (terms or {}).items() if c != 0}
        self._key: tuple | None = None
        self._text: str | None = None

    @property
    def key(self) -> tuple:
        """Identity for equality and hashing, built on first use (most expressions are never compared)."""
        if self._key is None:
            self._key = (self.const, frozenset((a._key, c) for a, c in self.terms.items()))
        return self._key

    # ---- construction ------------------------------------------------------------------------------------
    @staticmethod
    def clamped(expr: "Expr", lo: int, hi: int) -> "Expr":
        """`expr`, known to lie in [lo, hi] where it is used (a constant is itself)."""
        if expr.is_const:
            return expr
        return Expr(0, {Atom("clamped", lo, hi, expr=expr): 1})

    @staticmethod
    def minimum(expr: "Expr", k: int) -> "Expr":
        """min(expr, k), computed at run time unless the range of expr already lies below k."""
        if expr.hi <= k:
            return expr
        return Expr(0, {Atom("min", min(expr.lo, k), k, expr=expr, k=k): 1})

    @staticmethod
    def var(name: str, size: int) -> "Expr":
        """A loop variable taking values 0..size-1."""
        if size <= 1:
            return Expr(0)
        return Expr(0, {Atom("var", 0, size - 1, name=name): 1})

    def __add__(self, other: Union["Expr", int]) -> "Expr":
        if isinstance(other, int):
            return self._shifted(other) if other else self
        terms = dict(self.terms)
        for atom, c in other.terms.items():
            terms[atom] = terms.get(atom, 0) + c
        return _combine(Expr(self.const + other.const, terms))

    __radd__ = __add__

    def _shifted(self, k: int) -> "Expr":
        """`self + k`, sharing `self`'s terms (and key's): an expression is never changed once made. A kernel's
        index arithmetic adds constants to the same terms again and again (a CPU product's 256 outputs a tile)."""
        shifted = Expr.__new__(Expr)
        shifted.const, shifted.terms, shifted._text = self.const + k, self.terms, None
        shifted._key = None if self._key is None else (shifted.const, self._key[1])
        return shifted

    def __mul__(self, k: int) -> "Expr":
        if k == 1:
            return self
        return Expr(self.const * k, {a: c * k for a, c in self.terms.items()})

    __rmul__ = __mul__

    def __sub__(self, other: Union["Expr", int]) -> "Expr":
        return self + (other * -1 if isinstance(other, Expr) else -other)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Expr) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        """Its text with the ranges of its variables: what a kernel's fingerprint hashes."""
        ranges = sorted(f"{a.name}<{a.hi + 1}" for e in _nested(self) for a in e.terms if a.kind == "var")
        return f"{self.render()}[{','.join(ranges)}]" if ranges else self.render()

    # ---- ranges ------------------------------------------------------------------------------------------
    @property
    def lo(self) -> int:
        return self.const + sum(c * (a.lo if c > 0 else a.hi) for a, c in self.terms.items())

    @property
    def hi(self) -> int:
        return self.const + sum(c * (a.hi if c > 0 else a.lo) for a, c in self.terms.items())

    @property
    def is_const(self) -> bool:
        return not self.terms

    def variables(self) -> set[str]:
        names: set[str] = set()
        for expr in _nested(self):
            names.update(atom.name for atom in expr.terms if atom.kind == "var")
        return names

    # ---- division and modulo -----------------------------------------------------------------------------
    def __floordiv__(self, k: int) -> "Expr":
        assert k > 0
        if k == 1:
            return self
        lo, hi = self.lo, self.hi
        if lo // k == hi // k:
            return Expr(lo // k)
        if self.const == 0 and len(self.terms) == 1:
            (atom, coefficient), = self.terms.items()
            if coefficient == 1 and atom.kind == "div":  # (x // a) // k == x // (a*k) (x >= 0): one form for both
                return atom.expr // (atom.k * k)
        split = self._split_by_common_factor(k)
        if split is not None:  # (g*big + small) // k == big // (k/g) when 0 <= small < g and g | k
            big, _, g = split
            return big // (k // g)
        # pull out the terms (and the part of the constant) that k divides
        whole = {a: c // k for a, c in self.terms.items() if c % k == 0}
        rest = Expr(self.const % k, {a: c for a, c in self.terms.items() if c % k != 0})
        pulled = Expr(self.const // k, whole)
        if rest.lo >= 0 and rest.lo // k == rest.hi // k:
            return pulled + rest.lo // k
        if whole or self.const // k:
            if rest.lo >= 0:
                return pulled + _atom_expr(Atom("div", rest.lo // k, rest.hi // k, expr=rest, k=k))
        if lo >= 0:
            return _atom_expr(Atom("div", lo // k, hi // k, expr=self, k=k))
        raise ValueError("division of a possibly negative index")

    def __mod__(self, k: int) -> "Expr":
        assert k > 0
        if k == 1:
            return Expr(0)
        if self.lo >= 0 and self.hi < k:
            return self
        split = self._split_by_common_factor(k)
        if split is not None:  # (g*big + small) % k == g*(big % (k/g)) + small
            big, small, g = split
            return (big % (k // g)) * g + small
        # congruent modulo k: each coefficient reduced to the one of least size ((w*67 + t) % 66 == (w + t) % 66)
        rest = Expr(self.const % k, {a: _least_residue(c, k) for a, c in self.terms.items() if c % k != 0})
        if rest.lo >= 0 and rest.hi < k:
            return rest
        if rest.lo >= 0 and rest.lo // k == rest.hi // k:
            return rest - (rest.lo // k) * k
        target = rest if rest.lo >= 0 else self  # dropping multiples of k can leave a negative remainder
        if target.lo < 0:
            raise ValueError("modulo of a possibly negative index")
        return _atom_expr(Atom("mod", 0, min(k - 1, target.hi), expr=target, k=k))

    def _split_by_common_factor(self, k: int) -> "tuple[Expr, Expr, int] | None":
        """`self == g*big + small` with g > 1 dividing k and 0 <= small < g (a lane or row offset below a
        stride), trying the largest factor first; None if there is none."""
        for g in sorted({math.gcd(c, k) for c in self.terms.values()}, reverse=True):
            if g <= 1:
                break
            big_terms = {a: c // g for a, c in self.terms.items() if c % g == 0}
            small = Expr(self.const % g, {a: c for a, c in self.terms.items() if c % g != 0})
            if big_terms and small.lo >= 0 and small.hi < g:
                return Expr(self.const // g, big_terms), small, g
        return None

    # ---- rendering ---------------------------------------------------------------------------------------
    def render(self) -> str:
        if self._text is None:
            for inner in _nested(self)[:0:-1]:  # innermost first: each finds the texts of its atoms made
                inner._render_here()
            self._render_here()
        return self._text  # type: ignore[return-value]

    def render_grouped(self) -> str:
        """The text with the terms whose coefficients share a factor printed as one product, the other terms and
        the constant after it: `((a*16+b)*33+c+16)` rather than `(a*528+c+b*33+16)`. On the H200, NVIDIA's
        compiler ran the old hand-printed 4000³ product (this form, vector lanes read in place) at 44.4 TFLOP/s,
        the IR's (the flat form, lanes copied to scalars) at 37.4, this form alone at 38.6: bench/GPU.md."""
        scaled = {atom: c for atom, c in self.terms.items() if abs(c) > 1}
        factor = math.gcd(*scaled.values()) if len(scaled) > 1 else 1
        if factor <= 1:
            return self.render()
        grouped = f"{Expr(0, {atom: c // factor for atom, c in scaled.items()}).render()}*{factor}"
        return _joined([grouped] + _term_texts({a: c for a, c in self.terms.items() if a not in scaled}), self.const)

    def _render_here(self) -> None:
        if self._text is None:
            self._text = _joined(_term_texts(self.terms), self.const)


def _term_texts(terms: dict[Atom, int]) -> list[str]:
    return [text if c == 1 else f"{text}*{c}" for text, c in sorted((atom.render(), c) for atom, c in terms.items())]


def _joined(parts: list[str], const: int) -> str:
    """`parts` and the constant as one sum, parenthesised when it has several terms."""
    if const or not parts:
        parts = parts + [str(const)]
    return "(" + "+".join(parts).replace("+-", "-") + ")" if len(parts) > 1 else parts[0]


def _nested(expr: Expr) -> list[Expr]:
    """`expr` and every expression nested in its atoms, each once, in the order met from the outside in
    (iteratively: a long chain of views nests deeply)."""
    found, seen, stack = [], set(), [expr]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        found.append(current)
        stack.extend(atom.expr for atom in current.terms if atom.expr is not None)
    return found


def _atom_expr(atom: Atom) -> Expr:
    return Expr(0, {atom: 1})


def _combine(expr: Expr) -> Expr:
    """Fold c*M*(x//M) + c*(x%M) into c*x, and c*M*((x//M)%N) + c*(x%M) into c*(x%(M*N))."""
    changed = True
    while changed:
        changed = False
        for atom, c in list(expr.terms.items()):
            if atom.kind != "mod" or atom not in expr.terms:
                continue
            x, m = atom.expr, atom.k
            for other, c2 in list(expr.terms.items()):
                if other.kind == "div" and other.k == m and other.expr == x and c2 == c * m:
                    terms = dict(expr.terms)
                    del terms[atom], terms[other]
                    expr = Expr(expr.const, terms) + x * c  # type: ignore[operator]
                    changed = True
                    break
                inner = other.expr
                if (other.kind == "mod" and inner is not None and len(inner.terms) == 1 and inner.const == 0
                        and c2 == c * m):
                    (div_atom, coeff), = inner.terms.items()
                    if coeff == 1 and div_atom.kind == "div" and div_atom.k == m and div_atom.expr == x:
                        terms = dict(expr.terms)
                        del terms[atom], terms[other]
                        expr = Expr(expr.const, terms) + (x % (m * other.k)) * c  # type: ignore[operator]
                        changed = True
                        break
            if changed:
                break
    return expr


def _least_residue(c: int, k: int) -> int:
    """The coefficient congruent to c modulo k nearest zero (c itself where no other is nearer)."""
    r = c % k
    return min((r, r - k, c), key=abs)
