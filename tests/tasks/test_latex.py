"""The small LaTeX-to-sympy converter (tasks/latex.py) and its guards against expressions too big to evaluate."""

import pytest
import sympy

from transformer_squared.tasks.latex import LatexError, parse_latex

x, y = sympy.symbols("x y")


@pytest.mark.parametrize("latex, expected", [
    ("\\frac{1}{2}", sympy.Rational(1, 2)),
    ("\\frac12", sympy.Rational(1, 2)),
    ("\\dfrac{3}{4}", sympy.Rational(3, 4)),
    ("2\\sqrt{3}", 2 * sympy.sqrt(3)),
    ("\\sqrt[3]{8}", sympy.Integer(2)),
    ("\\pi r^2", sympy.pi * sympy.Symbol("r") ** 2),
    ("3 \\cdot 4", sympy.Integer(12)),
    ("3 \\times 4", sympy.Integer(12)),
    ("8 \\div 2", sympy.Integer(4)),
    ("x^23", 3 * x ** 2),                                # LaTeX superscripts take one character
    ("x^{23}", x ** 23),
    ("2^{-1}", sympy.Rational(1, 2)),
    ("-x + 2y", -x + 2 * y),
    ("(x+1)(x-1)", (x + 1) * (x - 1)),
    ("\\left(x\\right)", x),
    ("|-3|", sympy.Integer(3)),
    ("4!", sympy.Integer(24)),
    ("\\infty", sympy.oo),
    ("0.25", sympy.Rational(1, 4)),
    ("a_1 + a_{2}", sympy.Symbol("a_1") + sympy.Symbol("a_2")),
    ("\\log_2 8", sympy.Integer(3)),
    ("\\sin^2 x", sympy.sin(x) ** 2),
])
def test_parse(latex, expected):
    got = parse_latex(latex)
    assert got == expected or sympy.simplify(got - expected) == 0


@pytest.mark.parametrize("latex", [
    "10^{10^{10}}",            # would be computed eagerly in C: refused
    "9^{9^{9}}",
    "1000!",
    "\\frac{1}{0}",
    "\\unknown{3}",
    "x = 3",                   # equations are split by the caller, not parsed here
    "1, 2",
    "",
    "x" * 500,
])
def test_refused(latex):
    with pytest.raises(LatexError):
        parse_latex(latex)
