"""Hypothesis strategies for near-valid OpenQASM 2 and 3 programs.

A program is drawn from a small grammar (header, include, declarations, gate definitions nested
by calling each other, gate calls with modifiers, measurements in every form, control flow,
barriers, resets, delays, pragmas and annotations), its tokens joined by trivia of every kind
(spaces, tabs, LF / CRLF / CR line endings, `//` and `/* */` comments that themselves hold line
endings), with literals from the edges (huge integers, 1e400, long decimals), and then sometimes
mutated by a few character-level edits. Most programs are valid or one token away from valid,
which is where front ends disagree with themselves (for example, an OpenQASM 3 `//` comment ends
at CR, an OpenQASM 2 one only at LF).
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

__all__ = ["Program", "programs"]

LINE_ENDINGS = ("\n", "\r\n", "\r")

# (name, parameters, qubits)
_QASM3_GATES = (
    ("x", 0, 1),
    ("y", 0, 1),
    ("z", 0, 1),
    ("h", 0, 1),
    ("s", 0, 1),
    ("sdg", 0, 1),
    ("t", 0, 1),
    ("sx", 0, 1),
    ("id", 0, 1),
    ("rx", 1, 1),
    ("ry", 1, 1),
    ("rz", 1, 1),
    ("p", 1, 1),
    ("phase", 1, 1),
    ("u1", 1, 1),
    ("u2", 2, 1),
    ("u3", 3, 1),
    ("U", 3, 1),
    ("cx", 0, 2),
    ("CX", 0, 2),
    ("cy", 0, 2),
    ("cz", 0, 2),
    ("ch", 0, 2),
    ("swap", 0, 2),
    ("cp", 1, 2),
    ("cphase", 1, 2),
    ("crx", 1, 2),
    ("crz", 1, 2),
    ("cu", 4, 2),
    ("ccx", 0, 3),
    ("cswap", 0, 3),
    # Not in stdgates.inc: `cnot` is Braket's built-in name (gateway/backends/qiskit/
    # braket_gates.py), `rzz` unknown unless defined.
    ("cnot", 0, 2),
    ("rzz", 1, 2),
)
_QASM2_GATES = (
    ("x", 0, 1),
    ("y", 0, 1),
    ("z", 0, 1),
    ("h", 0, 1),
    ("s", 0, 1),
    ("sdg", 0, 1),
    ("t", 0, 1),
    ("tdg", 0, 1),
    ("id", 0, 1),
    ("sx", 0, 1),
    ("rx", 1, 1),
    ("ry", 1, 1),
    ("rz", 1, 1),
    ("u1", 1, 1),
    ("u2", 2, 1),
    ("u3", 3, 1),
    ("u", 3, 1),
    ("p", 1, 1),
    ("U", 3, 1),
    ("cx", 0, 2),
    ("CX", 0, 2),
    ("cz", 0, 2),
    ("cy", 0, 2),
    ("ch", 0, 2),
    ("swap", 0, 2),
    ("crz", 1, 2),
    ("cu1", 1, 2),
    ("cu3", 3, 2),
    ("rxx", 1, 2),
    ("rzz", 1, 2),
    ("ccx", 0, 3),
    ("cswap", 0, 3),
    ("rccx", 0, 3),
    ("c3x", 0, 4),
    # Not in qelib1.inc.
    ("cnot", 0, 2),
)

# Literals from the edges: what overflows 32 or 64 bits, what Python's int() refuses, floats that
# round to infinity or zero, decimals longer than a double holds.
_HUGE_INTEGERS = (
    "2147483647",
    "2147483648",
    "4294967296",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551616",
    "99999999999999999999",
    "9" * 400,  # past the largest double
    "9" * 2500,  # echoed in an error, past gRPC's default 8 KiB soft metadata limit
    "9" * 5000,  # past Python's int() digit limit
)
_ODD_REALS = (
    "1e400",
    "-1e400",
    "1e-400",
    "1e308",
    "1.7976931348623157e308",
    "1e300 * 1e300",
    "0." + "1234567890" * 40,
    "3.14159265358979323846264338327950288419716939937510582097494459",
    "1" + "0" * 400 + ".5",
    "-0.0",
    "inf",
    "nan",
    "sin(0.5)",
    "asin(2)",
    "exp(1000)",
)
_QASM3_ONLY_REALS = ("tau", "\u03c0", "1_000.5", "0x1F", "0x" + "F" * 300, "0b101", "2 ** 2000")
# OpenQASM 2 identifiers start with a lower-case letter; OpenQASM 3 ones need not.
_NAMES = ("q", "r", "anc", "c", "d", "m", "out", "q1", "flag")
_QASM3_NAMES = ("Q", "_x", "\u03b8")
_ODD_NAMES = ("include", "gate", "measure", "pi", "U", "qreg", "bit", "\u00e9t\u00e9", "esc_C")
# Block comments may hold line endings of every kind; a line comment ends at the first one.
_BLOCK_COMMENT_TEXT = st.lists(
    st.sampled_from([*"ab qreg[9];*/\"'\\@#", *LINE_ENDINGS]), max_size=12
).map("".join)
_LINE_COMMENT_TEXT = st.lists(st.sampled_from([*"ab qreg[9];*/\"'\\@#"]), max_size=12).map("".join)
_SNIPPETS = (
    "\r",
    "\n",
    "\r\n",
    "//",
    "/*",
    "*/",
    '"',
    "[",
    "]",
    "{",
    "}",
    "(",
    ")",
    ";",
    ",",
    "@",
    "$",
    "->",
    "1e400",
    "99999999999999999999",
    "\ufeff",
    "\x00",
    "\u00e9",
    "measure",
    "gate g a { gate h b { x b; } }",
    "qubit[3000000000] z;",
    "creg z[1000000];",
    "ctrl @",
    "pragma x\n",
    "#pragma braket verbatim\n",
    "@annotation\n",
    'include "qelib1.inc";',
    'include "/etc/passwd";',
)


@dataclass(frozen=True)
class Program:
    """A generated program: `text` in `dialect` (2 or 3)."""

    dialect: int
    text: str


@dataclass(frozen=True)
class _Register:
    name: str
    size: int  # 0 for a loose bit (`bit b;`): referred to without an index


class _Builder:
    """Draws one program; `self.draw` is Hypothesis' draw function."""

    def __init__(self, draw: st.DrawFn, dialect: int) -> None:
        self.draw = draw
        self.dialect = dialect
        # A sloppy program also has mistakes (wrong names, arities, operands, headers); a clean
        # one only edge-case literals and trivia, so that many programs get as far as running.
        self.sloppy = self.rare(4)
        # Out of 12: how often tokens are separated by something other than one space.
        self.noise = draw(st.sampled_from([0, 0, 0, 0, 0, 1, 2, 4, 12]))
        self.qregs: list[_Register] = []
        self.cregs: list[_Register] = []
        self.gates: list[tuple[str, int, int]] = list(
            _QASM3_GATES if dialect == 3 else _QASM2_GATES
        )

    def rare(self, one_in: int) -> bool:
        """True one time in `one_in` (False for Hypothesis' simplest choice)."""
        return bool(self.draw(st.integers(0, one_in - 1)) == one_in - 1)

    def slip(self, one_in: int) -> bool:
        """A mistake, one time in `one_in`, in a sloppy program only."""
        return self.sloppy and self.rare(one_in)

    # -- lexical level ---------------------------------------------------------------------

    def eol(self) -> str:
        return self.draw(st.sampled_from(LINE_ENDINGS))

    def trivia(self) -> str:
        """What may separate two tokens: a space, or (as often as this program's noise level
        says) other blanks, line endings and comments."""
        if self.draw(st.integers(1, 12)) > self.noise:
            return " "
        kind = self.draw(st.integers(6, 9))
        if kind == 6:
            return self.draw(st.sampled_from(["\t", "  ", " \t"]))
        if kind == 7:
            return self.eol()
        if kind == 8 and (self.dialect == 3 or self.slip(3)):
            # OpenQASM 2 has no block comments (Qiskit's reader refuses them): a mistake there.
            return "/*" + self.draw(_BLOCK_COMMENT_TEXT).replace("*/", "") + "*/"
        # An OpenQASM 2 line comment ends at LF only: one ended by a lone CR runs on and hides
        # the tokens after it (in OpenQASM 3 it ends there). Rarely, or few programs would parse.
        end = self.eol() if self.dialect == 3 or self.rare(6) else "\n"
        return " //" + self.draw(_LINE_COMMENT_TEXT) + end

    def join(self, tokens: list[str]) -> str:
        out = tokens[0]
        for token in tokens[1:]:
            out += self.trivia() + token
        return out

    def statement(self, tokens: list[str]) -> str:
        return self.join([*tokens, ";"])

    # -- literals --------------------------------------------------------------------------

    def size(self) -> int | str:
        if not self.rare(8):
            return self.draw(st.integers(1, 4))
        if self.draw(st.booleans()):
            return self.draw(st.sampled_from([0, 5, 12, 21, 25, 64, 1000, 100_001]))
        return self.draw(st.sampled_from(_HUGE_INTEGERS))

    def integer(self) -> str:
        if self.draw(st.integers(0, 7)) == 7:
            return self.draw(st.sampled_from(_HUGE_INTEGERS))
        return str(self.draw(st.integers(0, 5)))

    def angle(self, params: tuple[str, ...] = ()) -> str:
        if params and self.rare(2):
            return self.draw(st.sampled_from(params))
        if self.rare(10):
            if self.draw(st.booleans()):
                return self.draw(st.sampled_from(_HUGE_INTEGERS))
            odd = _ODD_REALS + (_QASM3_ONLY_REALS if self.dialect == 3 else ())
            return self.draw(st.sampled_from(odd))
        if self.draw(st.booleans()):
            return repr(self.draw(st.floats(-7, 7, allow_nan=False, allow_infinity=False)))
        return self.draw(st.sampled_from(["pi", "pi/2", "-pi/4", "2*pi", "pi/3 + 0.1"]))

    def name(self, taken: set[str]) -> str:
        pool = _NAMES + (_QASM3_NAMES if self.dialect == 3 else ())
        pool = _ODD_NAMES if self.slip(10) else pool
        name = self.draw(st.sampled_from(pool))
        return name if name not in taken else f"{name}{len(taken)}"

    # -- operands --------------------------------------------------------------------------

    def bit_of(self, registers: list[_Register], whole_ok: bool = True) -> str:
        """An operand: an indexed bit (mostly in range), a whole register, a slice, or worse."""
        if not registers:
            return f"${self.integer()}" if self.dialect == 3 else "q[0]"
        reg = self.draw(st.sampled_from(registers))
        if reg.size == 0:
            return reg.name
        kind = self.draw(st.integers(0, 15)) if self.slip(2) else self.draw(st.integers(0, 12))
        if kind <= 10 or (kind <= 12 and not whole_ok):
            return self.join([reg.name, "[", str(self.draw(st.integers(0, reg.size - 1))), "]"])
        if kind <= 12:
            return reg.name
        if kind == 13 and self.dialect == 3 and reg.size > 1:
            return self.join([reg.name, "[", "0", ":", str(reg.size - 1), "]"])
        if kind == 14:
            return self.join([reg.name, "[", str(reg.size), "]"])  # one past the end
        return self.join([reg.name, "[", self.integer(), "]"])

    def qubits(self, count: int) -> list[str]:
        """`count` operands, distinct when the registers allow it (mostly)."""
        if self.slip(4):
            return [self.bit_of(self.qregs) for _ in range(count)]
        flat = [
            f"{reg.name}[{i}]" if reg.size else reg.name
            for reg in self.qregs
            for i in range(min(reg.size, 8) if reg.size else 1)
        ]
        if len(flat) < count:
            return [self.bit_of(self.qregs) for _ in range(count)]
        return self.draw(st.permutations(flat))[:count]

    # -- statements ------------------------------------------------------------------------

    def header(self) -> str:
        if self.dialect == 3:
            choices = ["OPENQASM 3.0;", "OPENQASM 3;", "OPENQASM 3.1;", "OPENQASM 2.0;", ""]
        else:
            choices = ["OPENQASM 2.0;", "OPENQASM 2.0 ;", "OPENQASM 3.0;", "OPENQASM 2;", ""]
        if not self.slip(3):
            return choices[self.draw(st.integers(0, 1))]
        if self.rare(4):
            return f"OPENQASM {self.draw(st.sampled_from(_HUGE_INTEGERS))}.0;"
        return self.draw(st.sampled_from(choices[2:]))

    def include(self) -> str:
        standard = '"stdgates.inc"' if self.dialect == 3 else '"qelib1.inc"'
        if not self.slip(3):
            if self.dialect == 3 and not self.sloppy:
                # The OpenQASM 3 grammar allows no comment between `include` and its file.
                return "include " + self.join([standard, ";"])
            return self.statement(["include", standard])
        if self.rare(3):
            return ""
        other = '"qelib1.inc"' if self.dialect == 3 else '"stdgates.inc"'
        bad = self.draw(st.sampled_from([other, '"/etc/passwd"', '"x.inc"', '""', "stdgates"]))
        return self.statement(["include", bad])

    def declare(self, quantum: bool) -> str:
        taken = {r.name for r in self.qregs + self.cregs}
        name = self.name(taken)
        size = self.size()
        known = size if isinstance(size, int) else 4
        registers = self.qregs if quantum else self.cregs
        if self.dialect == 2 or self.draw(st.integers(0, 5)) == 5:
            # qreg/creg (also legal, if old-fashioned, in OpenQASM 3)
            registers.append(_Register(name, max(known, 1)))
            return self.statement(["qreg" if quantum else "creg", name, "[", str(size), "]"])
        if self.draw(st.integers(0, 4)) == 4:
            registers.append(_Register(name, 0))  # `qubit q;` / a loose `bit b;`
            return self.statement(["qubit" if quantum else "bit", name])
        registers.append(_Register(name, max(known, 1)))
        return self.statement(["qubit" if quantum else "bit", "[", str(size), "]", name])

    def definitions(self) -> list[str]:
        """A chain of gate definitions, each calling the previous `fan` times: depth d unrolls
        to fan^d operations (counted by the gateway, never unrolled)."""
        depth = self.draw(st.sampled_from([1, 1, 2, 3, 5, 8, 14, 20, 40]))
        fan = self.draw(st.integers(1, 3))
        arity = self.draw(st.integers(1, 2))
        with_param = self.draw(st.booleans())
        params = ("th",) if with_param else ()
        args = ["a", "b"][:arity]
        base = [g for g in self.gates if g[2] <= arity and g[1] <= 1]
        out: list[str] = []
        prefixes = ["g", "my_gate", "h"] + (["U2x"] if self.dialect == 3 else [])
        prefix = self.draw(st.sampled_from(prefixes)) + f"_{len(self.gates)}_"
        for level in range(depth):
            name = f"{prefix}{level}"
            body: list[str] = []
            for _ in range(fan if level else self.draw(st.integers(1, 3))):
                if level:
                    callee, n_params, n_qubits = f"{prefix}{level - 1}", len(params), arity
                else:
                    callee, n_params, n_qubits = self.draw(st.sampled_from(base))
                operands = self.draw(st.permutations(args))[:n_qubits]
                angles = [self.angle(params) for _ in range(n_params)]
                call = [callee, *(["(", ", ".join(angles), ")"] if angles else [])]
                body.append(self.statement([*call, ", ".join(operands)]))
            head = ["gate", name]
            if params:
                head += ["(", "th", ")"]
            out.append(self.join([*head, ", ".join(args), "{", *body, "}"]))
            self.gates.append((name, len(params), arity))
        return out

    def modifiers(self) -> tuple[list[str], int]:
        if self.dialect == 2 or not self.rare(4):
            return [], 0
        odd = [("pow(1e400)", 0), ("ctrl(" + _HUGE_INTEGERS[4] + ")", 0), ("ctrl(0)", 0)]
        chosen = self.draw(
            st.lists(
                st.sampled_from(
                    [
                        ("inv", 0),
                        ("ctrl", 1),
                        ("negctrl", 1),
                        ("ctrl(2)", 2),
                        ("pow(2)", 0),
                        ("pow(0.5)", 0),
                        ("pow(-1)", 0),
                        *(odd if self.rare(4) else []),
                    ]
                ),
                min_size=1,
                max_size=3,
            )
        )
        tokens: list[str] = []
        for modifier, _ in chosen:
            tokens += [modifier, "@"]
        return tokens, sum(extra for _, extra in chosen)

    def gate_call(self) -> str:
        name, n_params, n_qubits = self.draw(st.sampled_from(self.gates))
        mods, extra = self.modifiers()
        if self.slip(4):
            n_params += self.draw(st.sampled_from([-1, 1]))  # wrong arity
        angles = [self.angle() for _ in range(max(n_params, 0))]
        call = [*mods, name]
        if angles:
            call += ["(", ", ".join(angles), ")"]
        return self.statement([*call, ", ".join(self.qubits(n_qubits + extra))])

    def measure(self) -> str:
        if not self.cregs or not self.qregs:
            return self.statement(["measure", self.bit_of(self.qregs)])
        kind = self.draw(st.integers(0, 4))
        q = self.draw(st.sampled_from(self.qregs))
        same = [c for c in self.cregs if c.size == q.size]
        if kind <= 1 and (same or self.slip(2)):  # whole registers, of the same size
            source, target = q.name, self.draw(st.sampled_from(same or self.cregs)).name
        else:
            source, target = self.bit_of(self.qregs), self.bit_of(self.cregs)
        if self.dialect == 2 or kind in (1, 3):
            return self.statement(["measure", source, "->", target])
        if kind == 4 and self.slip(2):
            return self.statement(["measure", source])  # nowhere to keep the result
        return self.statement([target, "=", "measure", source])

    def condition(self) -> list[str]:
        reg = self.draw(st.sampled_from(self.cregs))
        if self.dialect == 2:
            return ["if", "(", reg.name, "==", self.integer(), ")"]
        if reg.size == 0 or self.draw(st.booleans()):
            return ["if", "(", reg.name if reg.size == 0 else f"{reg.name}[0]", ")"]
        return ["if", "(", reg.name, "==", self.integer(), ")"]

    def body_statement(self, depth: int = 0) -> str:
        kinds = ["gate"] * 6 + ["measure", "barrier", "reset"]
        if self.cregs:
            kinds.append("if")
        if self.dialect == 3:
            kinds += ["delay", "for", "annotated", "pragma", "gphase"]
        kind = self.draw(st.sampled_from(kinds))
        if kind == "gate" or (depth and kind in ("for", "if")):
            return self.gate_call()
        if kind == "measure":
            return self.measure()
        if kind == "barrier":
            operands = [self.bit_of(self.qregs) for _ in range(self.draw(st.integers(0, 2)))]
            return self.statement(["barrier", ", ".join(operands)] if operands else ["barrier"])
        if kind == "reset":
            return self.statement(["reset", self.bit_of(self.qregs)])
        if kind == "if":
            inner = self.body_statement(depth + 1)
            if self.dialect == 2:
                return self.join([*self.condition(), inner])
            block = [*self.condition(), "{", inner, "}"]
            if self.draw(st.booleans()):
                block += ["else", "{", self.body_statement(depth + 1), "}"]
            return self.join(block)
        if kind == "for":
            end = self.draw(st.sampled_from(["3", "0", "10", "100000", "1000000", "2**70"]))
            if self.rare(6):
                end = self.draw(st.sampled_from(_HUGE_INTEGERS))
            inner = self.body_statement(depth + 1)
            return self.join(["for", "int", "i", "in", "[", "0", ":", end, "]", "{", inner, "}"])
        if kind == "delay":
            duration = self.draw(st.sampled_from(["100ns", "1.5us", "0dt", "1e400ns", "-5ns"]))
            return self.statement(["delay", "[", duration, "]", self.bit_of(self.qregs)])
        if kind == "annotated":
            text = self.draw(st.sampled_from(["@foo", "@bar.baz 1 2 {", "@x(3)"]))
            text = "@" if self.slip(3) else text
            return text + self.eol() + self.gate_call()
        if kind == "pragma":
            text = self.draw(st.sampled_from(["pragma foo", "#pragma braket verbatim", "pragma"]))
            return text + self.draw(_LINE_COMMENT_TEXT) + self.eol()
        return self.statement(["gphase", "(", self.angle(), ")"])

    def program(self) -> str:
        parts = [self.header(), self.include()]
        if self.dialect == 3 and self.draw(st.integers(0, 9)) == 9:
            parts.append(self.statement(["input", "float", "theta"]))
        for _ in range(self.draw(st.integers(0, 2))):
            parts.extend(self.definitions())
        for _ in range(self.draw(st.sampled_from([1, 1, 1, 2, 2, 3, 0]))):
            parts.append(self.declare(quantum=True))
        for _ in range(self.draw(st.sampled_from([1, 1, 2, 3, 0]))):
            parts.append(self.declare(quantum=False))
        for _ in range(self.draw(st.integers(0, 8))):
            parts.append(self.body_statement())
        if self.draw(st.integers(0, 5)) < 5:
            parts.append(self.measure())
        out = ""
        for part in parts:
            if part:
                out += part + (self.trivia() if self.draw(st.integers(0, 4)) == 0 else self.eol())
        return out

    def mutate(self, text: str) -> str:
        """A few character-level edits: near-valid becomes one typo away from valid."""
        for _ in range(self.draw(st.integers(1, 3))):
            at = self.draw(st.integers(0, len(text)))
            kind = self.draw(st.integers(0, 3))
            if kind == 0:
                text = text[:at] + text[at + self.draw(st.integers(1, 6)) :]
            elif kind == 1:
                text = text[:at] + self.draw(st.sampled_from(_SNIPPETS)) + text[at:]
            elif kind == 2:
                # Swap every line ending of one kind for another.
                old, new = self.draw(st.permutations(LINE_ENDINGS))[:2]
                text = text.replace(old, new)
            else:
                text = text[:at] + text[at : at + 8] * 2 + text[at + 8 :]
        return text


@st.composite
def programs(draw: st.DrawFn, mutation_rate: int = 6) -> Program:
    """Near-valid OpenQASM 2 or 3: valid or almost; mutated one time in `mutation_rate`."""
    dialect = draw(st.sampled_from([2, 3]))
    builder = _Builder(draw, dialect)
    text = builder.program()
    if builder.rare(mutation_rate):
        text = builder.mutate(text)
    return Program(dialect, text)
