"""Index expressions: simplified forms stay equal to Python's arithmetic at every point of their range."""
import itertools

from hypothesis import given, settings, strategies as st

from zyx.jit.symbolic import Expr


def evaluate(expr: Expr, env: dict[str, int]) -> int:
    """The rendered C text evaluated with Python integers (all ranges here are non-negative, so C's `/` and
    `%` agree with Python's `//` and `%`)."""
    return eval(expr.render().replace("/", "//"), {}, dict(env))


def test_lane_offsets_below_a_stride_leave_the_division():
    gid = Expr.var("gid", 1 << 20)
    for lane in (0, 3, 15):
        position = gid * 16 + lane
        assert (position // 4096).render() == "(gid/256)"
        assert (position % 4096) == (gid % 256) * 16 + lane


def test_batch_offset_of_a_weight_gradient_becomes_a_loop_division():
    """((gid/64)%2048 + r*2048) / 16384 walks batches of 8 rows: r/8, with no work-item term left."""
    rows, r = Expr.var("gid", 1 << 20) // 64 % 2048, Expr.var("r", 64)
    assert ((rows + r * 2048) // 16384).render() == "(r/8)"


def test_contiguous_reshape_of_a_vector_position_is_linear_again():
    gid = Expr.var("gid", 4096)
    position = gid * 8 + 5
    rows, cols = position // 64, position % 64
    assert rows * 64 + cols == position


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 64), st.integers(1, 9)), min_size=1, max_size=3),
       st.integers(0, 40), st.integers(1, 300), st.integers(1, 300))
def test_division_and_modulo_match_python(terms, const, k, m):
    names = [f"x{i}" for i in range(len(terms))]
    expr = Expr(const)
    for name, (coefficient, size) in zip(names, terms):
        expr = expr + Expr.var(name, size) * coefficient
    quotient, remainder, nested = expr // k, expr % k, (expr // k) % m + (expr % k) // m
    twice = (expr // k) // m
    sizes = [size for _, size in terms]
    for values in itertools.product(*(range(size) for size in sizes)):
        env = dict(zip(names, values))
        value = const + sum(c * v for (c, _), v in zip(terms, values))
        assert evaluate(quotient, env) == value // k
        assert evaluate(remainder, env) == value % k
        assert evaluate(nested, env) == (value // k) % m + (value % k) // m
        assert evaluate(twice, env) == value // k // m


def test_a_division_of_a_division_is_one_division():
    """(x // a) // k and x // (a k) are one expression (unravelled batch and head indices: attention's dQ kernel
    staged its keys twice, read through either form, where once leaves room for cp.async's double buffers)."""
    gid = Expr.var("gid", 3072)
    assert gid // 16 // 12 == gid // 192 and (gid // 16 // 12).render() == "(gid/192)"
    assert (gid * 4 + 3) // 8 // 6 == (gid * 4 + 3) // 48


def test_variables_of_different_ranges_are_different_expressions():
    """Kernels reuse names (`gid`) with other ranges; memoized index maps must not mix them up."""
    from zyx.jit.lower import unravel
    small, large = Expr.var("gid", 4), Expr.var("gid", 12)
    assert small != large
    assert unravel(small, (3, 4))[0].render() == "0"       # gid < 4: always row 0
    assert unravel(large, (3, 4))[0].render() == "(gid/4)"


def test_grouped_rendering_factors_shared_coefficients_and_keeps_the_value():
    k, kk, lid = Expr.var("k", 250), Expr.var("kk", 16), Expr.var("lid", 256)
    index = (k % 2 * 16 + kk) * 33 + lid // 16 + 16
    assert index.render() == "((k%2)*528+(lid/16)+kk*33+16)"
    assert index.render_grouped() == "(((k%2)*16+kk)*33+(lid/16)+16)"
    assert (kk * 33 + lid).render_grouped() == (kk * 33 + lid).render()  # one scaled term: nothing to group
    for k_, kk_, lid_ in [(0, 0, 0), (7, 15, 255), (249, 3, 17)]:
        value = eval(index.render_grouped().replace("/", "//"), {"k": k_, "kk": kk_, "lid": lid_})
        assert value == ((k_ % 2) * 16 + kk_) * 33 + lid_ // 16 + 16


def test_a_coefficient_is_reduced_modulo_the_divisor():
    """A sliding window's row w of a tiled axis starts at w * (period + d): modulo the period that is w * d, and
    within the axis no modulo is left; a coefficient just below the divisor counts as a negative one, and what
    may be negative keeps its modulo."""
    w, t = Expr.var("w", 3), Expr.var("t", 60)
    assert (w * 67 + t) % 66 == w + t
    x = Expr.var("x", 5)
    for coefficient, const in ((65, 70), (131, 3), (65, 2)):
        remainder = (x * coefficient + const) % 66
        assert [evaluate(remainder, {"x": v}) for v in range(5)] == [(v * coefficient + const) % 66 for v in range(5)]
