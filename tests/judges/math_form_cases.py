r"""MATH- and GSM8K-style answers, right and wrong, for the verifier and for math-verify's own reading.

Each case is a response as a model or a textbook writes it, its reference, and a person's verdict:

- ``right``: the verdict of the default mode (the response's last explicit statement, else its
  closing sentence; a cut-off response only by a statement finished before the cut);
- ``strict``: the verdict with ``explicit_answers_only`` (None: the same as ``right``);
- ``why``: why math-verify's own ``verify(parse(reference), parse(response))`` says otherwise, where
  it does (tests/judges/test_answer_forms.py checks that every difference is explained, and that no
  wrong answer is credited).

The wrong answers are the ones that sit closest to each form: the right number inside a wrong
tuple, an interval with the wrong bracket, a retracted answer, the reference's denominator alone,
an inequality pointing the wrong way, a list that holds the answer among others.
Used by tests/judges/test_answer_forms.py and benchmarks/verifier_agreement.py.
"""

from __future__ import annotations

from typing import NamedTuple


class Case(NamedTuple):
    kind: str
    text: str
    reference: str
    right: bool
    strict: bool | None = None
    finish: str = "stop"
    why: str = ""


# Reasons math-verify's verdict differs from ours, shared by several cases.
MV_PLAIN_TUPLE = "math-verify reads a tuple or interval written without $...$ as its last number"
MV_LAST_NUMBER = "math-verify takes the last number of the text, one element of the list it ends"
MV_RELATION_TEXT = "math-verify reads a relation written without $...$ as its last number"
MV_NO_LETTERS = "math-verify's default targets have no choice letters or words outside LaTeX"
MV_RETRACTED = "math-verify prefers a \\boxed{} answer to a later 'the answer is' that replaces it"
MV_TRUNCATED = "math-verify does not know the response was cut off by the token limit"
MV_SCIENTIFIC = "math-verify reads 3e5 as its mantissa, 3"
MV_PLAIN_MATRIX = "math-verify reads a matrix written without $...$ as its last entry"
MV_JOINS_BOXES = "math-verify joins a retracted \\boxed{} answer with the one that replaces it into a list"
MV_SET_RELATION = (
    "math-verify compares a relation with an interval only when the interval is the response's; we "
    "compare them both ways (x > -2 is the set (-2, oo))"
)

CUT = "length"

CASES: list[Case] = [
    # --- tuples, intervals, sets, lists ------------------------------------------------------------
    Case("multi_part", r"Solving the system gives $x = 2$ and $y = -3$, so the point is $(2, -3)$.", "(2,-3)", True,
         False),
    Case("multi_part", r"The lines meet where $2x + y = 1$ and $x - y = 5$. Final answer: $\left(2, -3\right)$",
         "(2, -3)", True),
    Case("multi_part", r"The answer is (2, -3).", r"\left( 2, -3 \right)", True, why=MV_PLAIN_TUPLE),
    Case("multi_part", r"**Answer:** (2, -3)", "(2,-3)", True, why=MV_PLAIN_TUPLE),
    Case("multi_part", r"Therefore the point is \boxed{(2, 3)}.", "(2,-3)", False),
    Case("multi_part", r"The answer is $(-3, 2)$.", "(2,-3)", False),
    Case("multi_part", r"The vertex is at $(2, 5)$, so the answer is $(2, 5)$.", "2", False),
    Case("multi_part", r"The vertex is at (2, 5).", "5", False, why=MV_PLAIN_TUPLE),
    Case("multi_part", r"So the polar coordinates are $\boxed{\left( 3, \frac{\pi}{2} \right)}.$",
         r"\left( 3, \frac{\pi}{2} \right)", True),
    Case("multi_part", r"\boxed{\left( 3, \frac{\pi}{3} \right)}", r"\left( 3, \frac{\pi}{2} \right)", False),
    Case("multi_part", r"The answer is $(1, 2, 3)$.", "(1,2,3)", True),
    Case("multi_part", r"The answer is $(1, 3, 2)$.", "(1,2,3)", False),
    Case("multi_part", r"\boxed{ ( 4 , -1 ) }", "(4,-1)", True),
    Case("multi_part", r"Final Answer: The final answer is $(4,-1)$. I hope it is correct.", "(4, -1)", True),
    Case("multi_part", r"The answer is $(4, -1)$. Wait, I swapped the coordinates: the answer is $(-1, 4)$.",
         "(4,-1)", False),
    Case("multi_part", r"The answer is $(4, -1)$. Wait, I swapped the coordinates: the answer is $(-1, 4)$.",
         "(-1,4)", True),
    Case("multi_part", r"The answer is $(4, -1)$. Substituting back, $4 - 2(-1) = 6 \neq 5$, so the answer is "
         r"incorrect.", "(4,-1)", False),
    Case("multi_part", r"The answer is $(4, -1", "(4,-1)", False, finish=CUT),
    Case("multi_part", r"So the point is $(4, -1)$, and checking it in the second equation gives", "(4,-1)", False,
         finish=CUT, why=MV_TRUNCATED),
    Case("multi_part", r"The solution set is $[-1, 4]$.", "[-1,4]", True, False),
    Case("multi_part", r"\boxed{(-1, 4)}", "[-1, 4]", False),
    Case("multi_part", r"\boxed{[-1, 4)}", "[-1, 4]", False),
    Case("multi_part", r"**Answer:** $[0, 5)$", "[0,5)", True),
    Case("multi_part", r"Answer: [0, 5]", "[0,5)", False),
    Case("multi_part", r"The range is \boxed{[95, 100)}.", "[95,100)", True),
    Case("multi_part", r"The range is \boxed{[95,100]}.", "[95,100)", False),
    Case("multi_part", r"The range is \boxed{[95,100)}.", "95100", False),
    Case("multi_part", r"Answer: [0, 5)", "[0,5)", True, why=MV_PLAIN_TUPLE),
    Case("multi_part", r"Therefore $x \in [0, 5)$.", "[0,5)", True, False),
    Case("multi_part", r"The range is $\left[ \frac{1}{2}, \infty \right)$.", r"[\frac12,\infty)", True, False),
    Case("multi_part", r"The range is $\left( \frac{1}{2}, \infty \right)$.", r"[\frac12,\infty)", False),
    Case("multi_part", r"The domain is \boxed{(-\infty, 3) \cup (3, \infty)}.", r"(-\infty,3)\cup(3,\infty)", True),
    Case("multi_part", r"The domain is \boxed{(-\infty, 3)}.", r"(-\infty,3)\cup(3,\infty)", False),
    Case("multi_part", r"The answer is $(-\infty, -2] \cup [2, \infty)$.", r"(-\infty,-2]\cup[2,\infty)", True),
    Case("multi_part", r"The solutions are \boxed{\{-2, 2\}}.", r"\{-2,2\}", True),
    Case("multi_part", r"The answer is $\{2, -2\}$.", r"\{-2, 2\}", True),
    Case("multi_part", r"The answer is $\{2\}$.", r"\{-2, 2\}", False),
    Case("multi_part", r"The solutions are $x = -2$ and $x = 2$.", "-2, 2", True, False),
    Case("multi_part", r"The solutions are $x = -2$ and $x = 2$.", "2", False),
    Case("multi_part", r"The answer is 1, 2, and 3.", "1,2,3", True, why=MV_LAST_NUMBER),
    Case("multi_part", r"The answer is 1, 2, and 3.", "3", False),
    Case("multi_part", r"The answer is 1, 2.", "1,2,3", False),
    Case("multi_part", r"The answer is 3, or possibly $x = 5$.", "3", False),
    Case("multi_part", r"The answer is 3, or possibly $x = 5$.", "5", False,
         why="math-verify reads the last of the answers a response offers as alternatives"),
    Case("multi_part", r"The answer is 3 apples or 5 pears.", "3", False,
         why="math-verify reads the first number after 'answer', one of the alternatives offered"),
    Case("multi_part", r"The roots are 3 and 5.", "3, 5", True, False, why=MV_LAST_NUMBER),
    Case("multi_part", r"The roots are 3 and 5.", "5", False, why=MV_LAST_NUMBER),
    Case("multi_part", r"So $x = 1$ or $x = -3$, and the answer is $1, -3$.", "1, -3", True),
    Case("multi_part", r"The answer is $x = 1$ or $x = -3$.", "1", False),
    Case("multi_part", r"The answer is 12, 5 more than Ben has.", "12", True),
    Case("multi_part", "**Final answer:** **(3, 7)**", "(3,7)", True, why=MV_PLAIN_TUPLE),
    Case("multi_part", r"The ordered pair is \boxed{(3, 7)} (the vertex of the parabola).", "(3,7)", True),
    # --- matrices and vectors -------------------------------------------------------------------
    Case("matrix", r"Thus the vector is $\boxed{\begin{pmatrix} 1 \\ -2 \end{pmatrix}}$.",
         r"\begin{pmatrix} 1 \\ -2 \end{pmatrix}", True),
    Case("matrix", r"\boxed{\begin{pmatrix} 1 \\ 2 \end{pmatrix}}", r"\begin{pmatrix} 1 \\ -2 \end{pmatrix}", False),
    Case("matrix", r"\boxed{\begin{pmatrix} 1 \\ -2 \end{pmatrix}}", "-2", False),
    Case("matrix", r"\boxed{\begin{pmatrix} 1 & -2 \end{pmatrix}}", r"\begin{pmatrix} 1 \\ -2 \end{pmatrix}", False),
    Case("matrix", r"\boxed{\begin{bmatrix} 1 \\ -2 \end{bmatrix}}", r"\begin{pmatrix} 1 \\ -2 \end{pmatrix}", True),
    Case("matrix", r"The answer is $\begin{pmatrix} 3 & 0 \\ 0 & 3 \end{pmatrix}$.",
         r"\begin{pmatrix} 3 & 0 \\ 0 & 3 \end{pmatrix}", True),
    Case("matrix", r"The answer is $\begin{pmatrix} 3 & 1 \\ 0 & 3 \end{pmatrix}$.",
         r"\begin{pmatrix} 3 & 0 \\ 0 & 3 \end{pmatrix}", False),
    Case("matrix", r"The answer is $\begin{pmatrix} 3 & 0 \\ 0 & 3 \end{pmatrix}$.", "3", False),
    Case("matrix", r"The projection is $\begin{pmatrix} 4/5 \\ 8/5 \end{pmatrix}$.",
         r"\begin{pmatrix} \frac45 \\ \frac85 \end{pmatrix}", True, False),
    Case("matrix", r"The projection is \begin{pmatrix} 4/5 \\ 8/5 \end{pmatrix}.",
         r"\begin{pmatrix} \frac45 \\ \frac85 \end{pmatrix}", True, False, why=MV_PLAIN_MATRIX),
    Case("matrix", r"The projection is \begin{pmatrix} 4/5 \\ 8/5 \end{pmatrix}.", r"\frac85", False,
         why=MV_PLAIN_MATRIX),
    Case("matrix", "Therefore, the answer is\n\\[\n\\begin{pmatrix} 2 \\\\ -1 \\\\ 3 \\end{pmatrix}.\n\\]",
         r"\begin{pmatrix} 2 \\ -1 \\ 3 \end{pmatrix}", True,
         why="math-verify cannot parse a display formula that ends in a full stop and falls back to its last number"),
    Case("matrix", "Therefore, the answer is\n\\[\n\\begin{pmatrix} 2 \\\\ 1 \\\\ 3 \\end{pmatrix}.\n\\]",
         r"\begin{pmatrix} 2 \\ -1 \\ 3 \end{pmatrix}", False),
    Case("matrix", r"\boxed{\left[\begin{array}{cc} 1 & 0 \\ 0 & 1 \end{array}\right]}",
         r"\begin{pmatrix} 1 & 0 \\ 0 & 1 \end{pmatrix}", True),
    Case("matrix", r"So $\det A = \boxed{-2}$.", "-2", True),
    Case("matrix", r"The answer is $\begin{pmatrix} 1 \\ -2", r"\begin{pmatrix} 1 \\ -2 \end{pmatrix}", False,
         finish=CUT),
    Case("matrix", r"At first I had \boxed{\begin{pmatrix} 1 \\ 2 \end{pmatrix}}, but the second entry has the "
         r"wrong sign, so the answer is \boxed{\begin{pmatrix} 1 \\ -2 \end{pmatrix}}.",
         r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", False),
    # --- relations and equations ----------------------------------------------------------------
    Case("relation", r"\boxed{x \geq 3}", r"x \ge 3", True),
    Case("relation", r"\boxed{x \leq 3}", r"x \ge 3", False),
    Case("relation", r"The answer is x ≥ 3.", r"x \geq 3", True, why=MV_RELATION_TEXT),
    Case("relation", r"The answer is x > 3.", r"x \geq 3", False),
    Case("relation", r"The answer is $3 \le x$.", r"x\geq3", True),
    Case("relation", r"The answer is $x \geq 3$.", "x>3", False),
    Case("relation", r"The answer is $x \geq -3$.", r"x \geq 3", False),
    Case("relation", r"Therefore the solution is $-2 < x < 5$.", "-2<x<5", True, False),
    Case("relation", r"Therefore the solution is $-5 < x < 2$.", "-2<x<5", False),
    Case("relation", r"The answer is $-2 < x < 5$.", "(-2, 5)", True, why=MV_SET_RELATION),
    Case("relation", r"The answer is $x > -2$.", r"(-2, \infty)", True, why=MV_SET_RELATION),
    Case("relation", r"The answer is $x < -2$.", r"(-2, \infty)", False),
    Case("relation", r"\boxed{[3, \infty)}", r"x \geq 3", True),
    Case("relation", r"\boxed{(3, \infty)}", r"x \geq 3", False),
    Case("relation", r"\boxed{x^2 + y^2 = 25}", "x^2+y^2=25", True),
    Case("relation", r"\boxed{x^2 + y^2 = 5}", "x^2+y^2=25", False),
    Case("relation", r"The equation of the line is $y = 2x + 3$.", "y=2x+3", True, False),
    Case("relation", r"The equation of the line is $y = 3x + 2$.", "y=2x+3", False),
    Case("relation", r"The answer is $y = 2x + 3$.", "2x+3", True),
    Case("relation", r"The answer is $y = -2x + 3$.", "2x+3", False),
    Case("relation", r"The answer is $x^2 - 5x + 6 = 0$.", "x^2-5x+6=0", True),
    Case("relation", r"The answer is $x^2 - 5x - 6 = 0$.", "x^2-5x+6=0", False),
    Case("relation", r"The answer is x \geq -1", r"x\geq-1", True, why=MV_RELATION_TEXT),
    Case("relation", r"The answer is x \leq -1", r"x\geq-1", False),
    Case("relation", r"\boxed{x < 2}. Wait, dividing by $-3$ flips the inequality, so \boxed{x > 2}.", "x>2", True,
         why=MV_JOINS_BOXES),
    Case("relation", r"\boxed{x < 2}. Wait, dividing by $-3$ flips the inequality, so \boxed{x > 2}.", "x<2", False),
    Case("relation", r"The answer is x ≠ 3.", r"x \neq 3", True, why=MV_RELATION_TEXT),
    Case("relation", r"We find that the solution is $x != 5$.", r"x \neq 5", True, False),
    Case("relation", r"We find that the solution is $x != 5$.", "5", False),
    Case("relation", r"The answer is $x\approx11$.", "11", True),
    Case("relation", r"The answer is $x\approx11$.", "12", False),
    Case("relation", r"\boxed{k = 4}", "4", True),
    Case("relation", r"\boxed{k = -4}", "4", False),
    Case("relation", r"So $a = 2$ and $b = 3$, and the answer is $a = 2, b = 3$.", "(2,3)", True),
    Case("relation", r"So $2x = 10$, which gives $x = 5$.", "5", True, False),
    Case("relation", r"So $2x = 10$, which gives $x = 5$.", "10", False),
    # --- words, names, letters ------------------------------------------------------------------
    Case("words", r"The answer is (B).", "B", True, why=MV_NO_LETTERS),
    Case("words", r"The answer is (C).", "B", False),
    Case("words", r"\boxed{\text{(B)}}", "B", True),
    Case("words", r"\boxed{B}", r"\text{(B)}", True),
    Case("words", r"\boxed{E}", r"\text{(B)}", False),
    Case("words", r"**Answer: D**", r"\text{(D)}", True, why=MV_NO_LETTERS),
    Case("words", r"The answer is A because the slope is positive.", "A", True, why=MV_NO_LETTERS),
    Case("words", r"The answer is A, B, C or D.", "A", False),
    Case("words", r"At first I thought the answer is (A), but the graph rises, so the answer is (C).", "A", False),
    Case("words", r"At first I thought the answer is (A), but the graph rises, so the answer is (C).", "C", True,
         why=MV_NO_LETTERS),
    Case("words", r"Since $f(-x) = -f(x)$, the function is odd: $\boxed{\text{odd}}$.", r"\text{odd}", True),
    Case("words", r"\boxed{\text{even}}", r"\text{odd}", False),
    Case("words", r"The function is odd, so the answer is odd.", "odd", True, why=MV_NO_LETTERS),
    Case("words", r"The answer is not odd.", "odd", False),
    Case("words", r"The answer is odd. Checking $f(-x)$ once more, the answer is not odd.", "odd", False),
    Case("words", r"The answer is odd. Checking $f(-x)$ once more, the answer is not odd; it is even. The answer is "
         r"even.", r"\text{even}", True, why=MV_NO_LETTERS),
    Case("words", r"The answer is odd, not even.", r"\text{odd}", True, why=MV_NO_LETTERS),
    Case("words", r"The answer is neither.", r"\text{neither}", True, why=MV_NO_LETTERS),
    Case("words", r"Therefore, $\boxed{\text{Evelyn}}$ is our answer.", r"\text{Evelyn}", True),
    Case("words", r"\boxed{\text{Briana}}", r"\text{Evelyn}", False),
    Case("words", r"The answer is Evelyn.", "Evelyn", True, why=MV_NO_LETTERS),
    Case("words", r"The answer is Evelyn, Briana and Carla.", "Evelyn", False),
    Case("words", r"Final answer: yes", r"\text{yes}", True, why=MV_NO_LETTERS),
    Case("words", r"Final answer: no", r"\text{yes}", False),
    Case("words", r"The answer is \textbf{Sunday}.", r"\text{Sunday}", True, why=MV_NO_LETTERS),
    Case("words", r"The answer is Sunday. Wait, 10 days after Thursday is a Sunday... no, it is Monday. "
         r"The answer is Monday.", "Sunday", False),
    Case("words", r"Option B is the correct choice.", "B", False),
    # --- several boxed answers --------------------------------------------------------------------
    Case("several_boxed", r"The solutions are $x = \boxed{2}$ and $x = \boxed{3}$.", "2, 3", True),
    Case("several_boxed", r"The solutions are $x = \boxed{2}$ and $x = \boxed{3}$.", "3", False),
    Case("several_boxed", r"\boxed{2}, \boxed{3}", r"\{2,3\}", True),
    Case("several_boxed", r"The roots are \boxed{-1} or \boxed{4}.", "-1,4", True),
    Case("several_boxed", r"The roots are \boxed{-1} or \boxed{4}.", "4", False),
    Case("several_boxed", r"$\boxed{1} \text{ and } \boxed{-1}$", r"\pm 1", True),
    Case("several_boxed", r"So the answer is \boxed{6}. Hmm, I counted the corner twice; the total is \boxed{5}.",
         "5", True, why=MV_JOINS_BOXES),
    Case("several_boxed", r"So the answer is \boxed{6}. Hmm, I counted the corner twice; the total is \boxed{5}.",
         "6", False),
    Case("several_boxed", r"\boxed{\sqrt{2}} then \boxed{7}", "7", True, why="math-verify joins boxes 10 characters "
         "apart whatever stands between them; 'then' is not a list"),
    Case("several_boxed", "The answer is \\boxed{12}.\n\nFinal answer: \\boxed{12}", "12", True),
    Case("several_boxed", r"$a = \boxed{2}$, $b = \boxed{-3}$", "2, -3", True),
    Case("several_boxed", r"The answer is \boxed{4}. Wait, I forgot the last one. The answer is 5.", "5", True,
         why=MV_RETRACTED),
    Case("several_boxed", r"The answer is \boxed{4}. Wait, I forgot the last one. The answer is 5.", "4", False,
         why=MV_RETRACTED),
    Case("several_boxed", r"The roots are \boxed{2} and \boxed{3", "2", False, finish=CUT,
         why="math-verify reads the one box that closed of a list cut off by the token limit"),
    Case("several_boxed", r"The roots are \boxed{2} and \boxed{3", "2, 3", False, finish=CUT),
    Case("several_boxed", r"\boxed{A} \boxed{C}", "A", False),
    # --- number forms ---------------------------------------------------------------------------
    Case("number_forms", r"Each friend gets \frac{3}{4} of a pizza.", r"\frac{3}{4}", True, False),
    Case("number_forms", r"Each friend gets \frac{3}{4} of a pizza.", "4", False),
    Case("number_forms", r"Each friend gets \frac{3}{4} of a pizza.", "3", False),
    Case("number_forms", r"Ben eats \frac{1}{8} of the cake.", "8", False),
    Case("number_forms", r"So the probability is \dfrac{5}{12}.", "5/12", True, False,
         why="math-verify reads \\frac outside $...$ but not \\dfrac, and takes the denominator"),
    Case("number_forms", r"The answer is $3 \times 10^{5}$.", "300000", True),
    Case("number_forms", r"The answer is $3 \times 10^{5}$.", "3", False),
    Case("number_forms", r"The answer is 3e5.", "300000", True, why=MV_SCIENTIFIC),
    Case("number_forms", r"The answer is 3e5.", "3", False, why=MV_SCIENTIFIC),
    Case("number_forms", r"There are about 6.02 × 10^23 atoms.", r"6.02 \times 10^{23}", True, False,
         why="math-verify reads '6.02 × 10^23' outside $...$ as 10"),
    Case("number_forms", r"There are about 6.02 × 10^23 atoms.", "6.02", False),
    Case("number_forms", r"There are about 6.02 × 10^23 atoms.", "23", False),
    Case("number_forms", r"The wavelength is $1.5 \times 10^{-5}$ m.", "0.000015", True, False),
    Case("number_forms", r"The answer is .75", r"\frac34", True),
    Case("number_forms", r"The probability is .25.", "1/4", True, False),
    Case("number_forms", r"The answer is .5", "5", False),
    Case("number_forms", r"The answer is $2\sqrt3$.", r"2\sqrt{3}", True),
    Case("number_forms", r"\boxed{\sqrt3}", r"\sqrt{3}", True),
    Case("number_forms", r"The side length is 2\sqrt3.", r"2\sqrt{3}", True, False,
         why="math-verify reads 2\\sqrt3 outside $...$ as 2"),
    Case("number_forms", r"The side length is 2\sqrt3.", "3", False),
    Case("number_forms", r"\boxed{\sqrt{2}}", "2", False),
    Case("number_forms", r"The answer is $10,\!000$.", "10000", True),
    Case("number_forms", r"There are $1{,}000{,}000$ ways.", "1000000", True, False),
    Case("number_forms", r"The total is \$10,\!500.", "10500", True, False,
         why="math-verify finds no number in '\\$10,\\!500' outside $...$"),
    Case("number_forms", r"The answer is $12\,345$.", "12345", True,
         why="math-verify reads a thin space between digit groups as a product"),
    Case("number_forms", r"The answer is 10000.", r"10,\!000", True),
    Case("number_forms", r"The answer is 1000.", r"10,\!000", False),
    Case("number_forms", "The answer is 12.\nHmm, 5 + 8 is 13, so the answer is not 12.", "12", False,
         why="math-verify reads the number of a statement that takes it back"),
    Case("number_forms", "The answer is 12.\nHmm, 5 + 8 is 13, so the answer is not 12.\nThe answer is 13.", "13",
         True),
    Case("number_forms", r"The answer is 18.", r"\$18", True),
    Case("number_forms", r"\boxed{18}", r"\$18.00", True),
    Case("number_forms", r"The answer is 81.", r"\$18", False),
    Case("number_forms", r"She pays \$18 in all, so the answer is \$18.", "18 dollars", True,
         why="math-verify reads the unit of the reference '18 dollars' as variables"),
    Case("number_forms", r"\boxed{25\%}", "25", True),
    Case("number_forms", r"\boxed{-\frac{1}{2}}", "-0.5", True),
    Case("number_forms", r"\boxed{\frac{1}{2}}", r"-\frac12", False),
    # --- formulas as answers (MATH's usual kind, which must not get worse) ---------------------------
    Case("expressions", r"By the quadratic formula, $x = \boxed{1 \pm \sqrt{19}}.$", r"1 \pm \sqrt{19}", True),
    Case("expressions", r"By the quadratic formula, $x = \boxed{1 \pm \sqrt{17}}.$", r"1 \pm \sqrt{19}", False),
    Case("expressions", r"The roots are $-2$ and $1 \pm \sqrt{5}$, so the answer is $\boxed{\{1\pm\sqrt{5},-2\}}.$",
         r"\{1\pm\sqrt{5},-2\}", True),
    Case("expressions", r"Hence, $\boxed{f(2) < f(1) < f(4)}.$", "f(2) < f(1) < f(4)", True),
    Case("expressions", r"Hence, $\boxed{f(1) < f(2) < f(4)}.$", "f(2) < f(1) < f(4)", False),
    Case("expressions", "By sum-to-product,\n\\[\\sin (a + b) - \\sin (a - b) = \\boxed{2 \\sin b \\cos a}.\\]",
         r"2 \sin b \cos a", True),
    Case("expressions", r"The ratio is $\boxed{\frac{\pi r}{h+r}}$.", r"\frac{\pi r}{h+r}", True),
    Case("expressions", r"The ratio is $\boxed{\frac{\pi r}{h-r}}$.", r"\frac{\pi r}{h+r}", False),
    Case("expressions", r"The distance is $\boxed{125\textnormal{ miles}}.$", "125", True),
    Case("expressions", r"The quotient is $\boxed{204_5}$.", "204_5", True),
    Case("expressions", r"So $x \in \boxed{\{-1\} \cup [0,7)}.$", r"\{-1\} \cup [0,7)", True),
    Case("expressions", r"The only integer roots are $\boxed{-2,1}.$", "-2,1", True),
    Case("expressions", r"The only integer roots are $\boxed{-2,1}.$", "1", False),
    Case("expressions", r"Thus $x = 5 + 5 + 1 = 7 = 11$.", "x = 11", True, False),
    Case("expressions", r"Thus $x = 5 + 5 + 1 = 11 = 7$.", "x = 11", False),
    Case("expressions", r"Then $129^{34}+96^{38} \equiv \boxed{9} \pmod{11}.$", "9", True),
    Case("expressions", r"Thus the angle is $\boxed{90^\circ}.$", r"90^\circ", True),
    Case("expressions", r"The answer is $\boxed{0.0833333333333333}$", r"\frac{1}{12}", True),
    Case("expressions", r"The answer is $\boxed{0.083}$", r"\frac{1}{12}", False),
    Case("expressions", r"So the expression equals $\boxed{\sec^2 y}$.", r"\tan^2(y)+1", True),
    Case("expressions", r"Thus $x <= 2$ is our answer.", r"x \leq 2", True),
    Case("expressions", r"Thus $x >= 2$ is our answer.", r"x \leq 2", False),
    Case("expressions", r"The answer is $\boxed{2^{10}}$.", "1024", True),
    Case("expressions", r"The answer is $\boxed{\dfrac{\sqrt{3}}{2}}$.", r"\frac{\sqrt3}{2}", True),
    Case("expressions", r"The answer is $\boxed{\dfrac{\sqrt{2}}{2}}$.", r"\frac{\sqrt3}{2}", False),
    Case("expressions", "**Final Answer**\n\\boxed{189}\n</think>\n\nThus, the area is \\(\\boxed{189}\\) square cm.",
         "189", True),
    # --- GSM8K's final-answer marker ------------------------------------------------------------
    Case("gsm8k_marker", "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in April "
         "and May.\n#### 72", "72", True),
    Case("gsm8k_marker", "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in April "
         "and May.\n#### 72", "71", False),
    Case("gsm8k_marker", "Weng earns 12/60 = $0.2 per minute.\nWorking 50 minutes, she earned 0.2 x 50 = $10.\n"
         "#### 10", "10", True),
    Case("gsm8k_marker", "The total is 600 * 2 = 1200 dollars.\n#### 1,200", "1200", True),
    Case("gsm8k_marker", "He pays 3 * 6 = \\$18.\n#### \\$18", "18", True),
    Case("gsm8k_marker", "Natalia sold 48+24 = 72 clips.\n#### 7", "72", False, finish=CUT),
    Case("gsm8k_marker", "Natalia sold 48+24 = 72 clips.\n#### 72\nNatalia", "72", True, finish=CUT),
    Case("gsm8k_marker", "#### Step 1: Add the apples\n5 + 7 = 12", "12", True, False),
    Case("gsm8k_marker", "#### 1. Compute the total\nShe has 5 + 7 = 12 apples.", "1", False),
    Case("gsm8k_marker", "48 + 24 = 72\n#### 72\n\nWait, she sold half as many in May: 48 + 12 = 60.\n#### 60", "60",
         True),
    Case("gsm8k_marker", "48 + 24 = 72\n#### 72\n\nWait, she sold half as many in May: 48 + 12 = 60.\n#### 60", "72",
         False),
    Case("gsm8k_marker", "#### Final Answer\n72", "72", True),
    Case("gsm8k_marker", "The answer is 72.\n#### 72", "72", True),
    Case("gsm8k_marker", "Each box holds 8 - 13 = -5 degrees.\n#### -5", "-5", True),
    Case("gsm8k_marker", "She keeps half of the pie.\n#### 0.5", r"\frac{1}{2}", True),
    Case("gsm8k_marker", "Add 4 and 3.\n#### N", "7", False, False),
    Case("gsm8k_marker", "The answer is 72.", "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold "
         "48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72", True),
    Case("gsm8k_marker", "The answer is 24.", "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold "
         "48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72", False),
]


def math_verify_verdict(text: str, reference: str) -> bool:
    """math-verify on its own: the reference parsed as a formula (or as a solution when it is one),
    the response with ``parse``'s defaults."""
    import logging

    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    whole = "\\boxed" in reference or "####" in reference or "\n" in reference
    return bool(verify(parse(reference if whole else f"${reference}$"), parse(text)))


KINDS = ("multi_part", "matrix", "relation", "words", "several_boxed", "number_forms", "gsm8k_marker", "expressions")
