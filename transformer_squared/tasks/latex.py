"""A small LaTeX-to-sympy converter for final answers (MATH), with guards that keep sympy from hanging.

`sympy.parsing.latex` needs antlr4-python3-runtime at one exact version, which we do not want to require, and
final answers use a small subset of LaTeX anyway: numbers, letters, + - * / ^, \\frac, \\sqrt, \\pi, \\cdot,
\\times, \\div, trigonometric and log functions, |x|, n!, \\infty and implicit multiplication (`2\\sqrt{3}x`).
Anything else raises `LatexError`, and the caller falls back to string comparison.

Why guards: sympy evaluates `Integer ** Integer` and `factorial(Integer)` eagerly in C-level big-integer code
that no signal can interrupt, so `10^{10^{10}}` would hang the scorer. Literal sizes, exponents and factorial
arguments are bounded while building the expression.
"""

from __future__ import annotations

import re

MAX_CHARS = 400  # longer "answers" are not final answers; refuse rather than parse
MAX_DIGITS = 60
MAX_EXPONENT = 100_000  # any base: sqrt(2)^(10^5) is still a 15k-digit integer
MAX_RESULT_DIGITS = 20_000  # rational bases: digits(base) * exponent
MAX_FACTORIAL = 300


class LatexError(ValueError):
    """The string is outside the supported LaTeX subset (or too big to evaluate safely)."""


_TOKEN = re.compile(r"\s*(\d+\.\d*|\.\d+|\d+|\\[a-zA-Z]+|\\[{}|,;!: ]|[A-Za-z]|[-+*/^_()\[\]{}!,|=])")
_FUNCS = {"sin", "cos", "tan", "cot", "sec", "csc", "arcsin", "arccos", "arctan", "sinh", "cosh", "tanh",
          "ln", "log", "exp"}
_IGNORED = {"\\left", "\\right", "\\displaystyle", "\\,", "\\;", "\\!", "\\:", "\\ ", "\\big", "\\Big",
            "\\bigl", "\\bigr", "\\Bigl", "\\Bigr", "\\mathrm", "\\text", "\\textbf", "\\mathbf", "\\operatorname"}


def tokenize(s: str) -> list[str]:
    """Split LaTeX into tokens; spacing commands and \\left/\\right are dropped."""
    if len(s) > MAX_CHARS:
        raise LatexError("too long")
    tokens, pos = [], 0
    s = s.strip()
    while pos < len(s):
        m = _TOKEN.match(s, pos)
        if not m:
            raise LatexError(f"unexpected character {s[pos]!r}")
        pos = m.end()
        tok = m.group(1)
        if tok in _IGNORED:
            continue
        tokens.append({"\\{": "(", "\\}": ")", "\\|": "|"}.get(tok, tok))
    return tokens


class _Parser:
    def __init__(self, tokens: list[str]):
        import sympy

        self.sp = sympy
        self.toks = tokens
        self.i = 0

    # -- token helpers
    def peek(self) -> str | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, expected: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (expected is not None and tok != expected):
            raise LatexError(f"expected {expected or 'more input'}, got {tok!r}")
        self.i += 1
        return tok

    # -- grammar: expr := term (+|- term)* ; term := unary ((*|/|juxtaposition) unary)* ; unary := -unary | power
    def parse(self):
        e = self.expr()
        if self.peek() is not None:
            raise LatexError(f"unexpected {self.peek()!r}")
        return e

    def expr(self):
        e = self.term()
        while self.peek() in ("+", "-"):
            op = self.take()
            rhs = self.term()
            e = e + rhs if op == "+" else e - rhs
        return e

    def term(self):
        e = self.unary()
        while True:
            tok = self.peek()
            if tok in ("*", "\\cdot", "\\times"):
                self.take()
                e = e * self.unary()
            elif tok in ("/", "\\div"):
                self.take()
                d = self.unary()
                if d == 0:
                    raise LatexError("division by zero")
                e = e / d
            elif tok is not None and self._starts_atom(tok):
                e = e * self.power()  # implicit multiplication binds like *
            else:
                return e

    def _starts_atom(self, tok: str) -> bool:
        if tok in ("(", "[", "{") or tok[0].isdigit() or tok[0] == "." or tok.isalpha():
            return True
        return tok.startswith("\\") and tok not in ("\\cdot", "\\times", "\\div")

    def unary(self):
        if self.peek() == "-":
            self.take()
            return -self.unary()
        if self.peek() == "+":
            self.take()
            return self.unary()
        return self.power()

    def power(self):
        base = self.postfix()
        if self.peek() == "^":
            self.take()
            exp = self.exponent()
            return self._pow(base, exp)
        return base

    def exponent(self):
        tok = self.peek()
        if tok == "{":
            return self.group("{", "}")
        if tok is not None and tok[0].isdigit():
            # `x^23` in LaTeX is x^2 * 3: only the first character is the superscript
            self.take()
            if len(tok) > 1:
                self.toks.insert(self.i, tok[1:])
            return self.sp.Integer(int(tok[0]))
        if tok == "-":
            self.take()
            return -self.exponent()
        return self.atom()

    def _pow(self, base, exp):
        if exp.is_number and base.is_number:
            if exp.is_Rational and abs(exp) > MAX_EXPONENT and abs(base) != 1:
                raise LatexError("exponent too large to evaluate safely")
            if base.is_Rational and exp.is_Rational:
                digits = max(len(str(abs(base.p))), len(str(base.q)))
                if digits * abs(float(exp)) > MAX_RESULT_DIGITS:
                    raise LatexError("power too large to evaluate safely")
        return self.sp.Pow(base, exp)

    def postfix(self):
        e = self.atom()
        while self.peek() == "!":
            self.take()
            if not (e.is_Integer and 0 <= int(e) <= MAX_FACTORIAL):
                raise LatexError("factorial of a non-literal or large number")
            e = self.sp.factorial(e)
        return e

    def group(self, open_: str, close: str):
        self.take(open_)
        e = self.expr()
        self.take(close)
        return e

    def atom(self):
        sp = self.sp
        tok = self.peek()
        if tok is None:
            raise LatexError("unexpected end")
        if tok in ("(", "[", "{"):
            return self.group(tok, {"(": ")", "[": "]", "{": "}"}[tok])
        if tok == "|":
            self.take()
            e = self.expr()
            self.take("|")
            return sp.Abs(e)
        if tok[0].isdigit() or tok[0] == ".":
            self.take()
            if len(tok.replace(".", "")) > MAX_DIGITS:
                raise LatexError("number too long")
            return sp.Rational(tok) if "." in tok else sp.Integer(int(tok))
        if tok.isalpha() and len(tok) == 1:
            self.take()
            name = tok
            if self.peek() == "_":  # x_1, a_{n}: one symbol
                self.take()
                sub = self.take()
                if sub == "{":
                    parts = []
                    while self.peek() not in ("}", None):
                        parts.append(self.take())
                    self.take("}")
                    sub = "".join(parts)
                name = f"{tok}_{sub}"
            return sp.Symbol(name)
        if tok.startswith("\\"):
            return self.command()
        raise LatexError(f"unexpected {tok!r}")

    def command(self):
        sp = self.sp
        cmd = self.take()[1:]
        if cmd in ("frac", "dfrac", "tfrac", "cfrac"):
            num = self.arg()
            den = self.arg()
            if den == 0:
                raise LatexError("division by zero")
            return num / den
        if cmd == "sqrt":
            if self.peek() == "[":
                n = self.group("[", "]")
                return sp.root(self.arg(), n)
            return sp.sqrt(self.arg())
        if cmd == "pi":
            return sp.pi
        if cmd == "infty":
            return sp.oo
        if cmd in ("circ", "degree"):
            return sp.Integer(1)  # degree marks are units; normalisation usually strips them earlier
        if cmd in _FUNCS:
            base = None
            if cmd == "log" and self.peek() == "_":
                self.take()
                base = self.arg()
            power = None
            if self.peek() == "^":  # \sin^2 x
                self.take()
                power = self.exponent()
            x = self.arg() if self.peek() in ("{", "(", "[") else self.power()
            f = {"ln": sp.log, "log": sp.log, "exp": sp.exp, "arcsin": sp.asin, "arccos": sp.acos,
                 "arctan": sp.atan}.get(cmd) or getattr(sp, cmd)
            y = sp.log(x, base) if base is not None else f(x)
            return y ** power if power is not None else y
        greek = {"alpha", "beta", "gamma", "delta", "theta", "phi", "lambda", "mu", "omega", "sigma", "tau", "rho"}
        if cmd in greek:
            return sp.Symbol(cmd)
        raise LatexError(f"unsupported command \\{cmd}")

    def arg(self):
        """A macro argument: {group}, (group), or a single token (`\\frac12`, `\\sqrt3`)."""
        tok = self.peek()
        if tok in ("{", "(", "["):
            return self.group(tok, {"{": "}", "(": ")", "[": "]"}[tok])
        if tok is not None and tok[0].isdigit() and len(tok) > 1 and "." not in tok:
            self.take()
            self.toks.insert(self.i, tok[1:])
            return self.sp.Integer(int(tok[0]))
        return self.atom()


def parse_latex(s: str):
    """A sympy expression for the LaTeX string `s`; raises `LatexError` outside the supported subset.

    Not time-bounded by itself: call it through `tasks.bounded.call_with_timeout` (as `latex_equal` does).
    """
    tokens = tokenize(s)
    if not tokens:
        raise LatexError("empty")
    return _Parser(tokens).parse()
