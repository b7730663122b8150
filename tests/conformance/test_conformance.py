"""One suite that pins every local backend to the same answers, over real gRPC (issue 9).

Every test runs on every backend of the fleet (tests/conformance/conftest.py). Expected results
are derived by hand from each circuit (X on chosen qubits, rotations with known
probabilities, GHZ stabilisers), never from another run of a simulator; the statistical bounds
and their false-failure rates are stated in tests/conformance/stats.py. A backend is held to
what it declares: a feature it lists must work, one it does not list must be refused with
UNSUPPORTED_FEATURE; its qubit count and target must be what it accepts.

The last test shows the suite can fail: a backend that reverses Aer's bit order turns the bit
order, distribution and cross-backend checks red.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from qgateway import Client, estimator_pub, sampler_pub
from qgateway.errors import QGatewayError

from tests.conformance.conftest import EXACT, NOISY, PROFILES, REVERSED
from tests.conformance.stats import assert_counts_follow, assert_within_noise

FLEET = [*EXACT, *NOISY]
H3 = 'OPENQASM 3.0;\ninclude "stdgates.inc";\n'
SHOTS = 4000

# Five qubits (the noisy fakes have five), three registers of widths 1, 3 and 2, measured in a
# scrambled order; q[2] is flipped but never measured, and b[1], c[0] are never written.
#   a[0] <- q[3] = 1;  b[0] <- q[4] = 0, b[2] <- q[0] = 1;  c[1] <- q[1] = 1
BIT_ORDER = (
    H3
    + "qubit[5] q; bit[1] a; bit[3] b; bit[2] c;\n"
    + "x q[0]; x q[1]; x q[2]; x q[3];\n"
    + "a[0] = measure q[3]; b[0] = measure q[4]; b[2] = measure q[0]; c[1] = measure q[1];\n"
)
BIT_ORDER_EXPECTED = {"a": "1", "b": "100", "c": "10"}

# q[0] and q[3] carry one bit b with P(1) = sin^2(theta/2), q[1] is a fair coin u, q[2] reads 1.
# The register reads c3 c2 c1 c0 = b b 1 u (no reordering of the bits maps it onto itself).
SWEEP = (
    H3
    + "input float[64] theta;\nqubit[4] q; bit[4] c;\n"
    # A controlled rotation whose angle is bound (its control q[2] is |1>: ry(theta) on q[0]):
    # Aer applied bound angles of controlled rotations wrongly.
    + "x q[2]; cry(theta) q[2], q[0]; cx q[0], q[3]; h q[1];\n"
    + "c[0] = measure q[1]; c[1] = measure q[2]; c[2] = measure q[0]; c[3] = measure q[3];\n"
)
THETAS = [0.0, 0.7, 1.9, math.pi]

# cos(t/2)|0000> + sin(t/2)|1111>, entangled as a star from q[0] (on a line of qubits, as the
# 5-qubit fakes have, no layout avoids routing: the layout is not the identity).
STAR = (
    H3
    + "input float[64] phi;\nqubit[4] q;\n"
    + "ry(phi) q[0]; cx q[0], q[1]; cx q[0], q[2]; cx q[0], q[3];\n"
)
STAR_ANGLES = [0.0, 0.9, math.pi / 2, 2.5]


def _star_expectations(t: float) -> list[float]:
    """The observables of test_estimator_observables, by hand: <Z0> = cos t; <Z0 Z3> = 1;
    <XXXX> = sin t; <YYXX> = -sin t (Y Y maps |00> to -|11>); 0.5 <Z1> + 2 <X2> = 0.5 cos t."""
    return [
        math.cos(t),
        1.0,
        math.sin(t),
        -math.sin(t),
        0.5 * math.cos(t),
    ]


STAR_OBSERVABLES = [
    "IIIZ",  # dense: character 0 is the highest qubit
    [("ZZ", [3, 0], 1.0)],  # sparse, qubits listed out of order
    "XXXX",
    [("XXYY", [3, 2, 1, 0], 1.0)],  # Y on q1 and q0
    [("Z", [1], 0.5), ("X", [2], 2.0)],  # a sum; <X2> = 0 on this state
]


def _sweep_probabilities(theta: float) -> dict[str, float]:
    s = math.sin(theta / 2) ** 2
    return {"0010": (1 - s) / 2, "0011": (1 - s) / 2, "1110": s / 2, "1111": s / 2}


def _check(client: Client, backend: str, counts: dict[str, int], ideal: dict[str, float]) -> None:
    noise = PROFILES[backend].noise if backend in PROFILES else None
    if noise is None:
        assert_counts_follow(counts, {k: v for k, v in ideal.items() if v > 0})
    else:
        assert_within_noise(counts, ideal, noise)


# --------------------------------------------------------------------------- the checks
# Functions of (client, backend), so the last test can run them on the reversing backend.


def check_bit_order(client: Client, backend: str) -> None:
    result = client.run(BIT_ORDER, backend=backend, shots=SHOTS, seed=5).sampler()
    assert result.register_names == ["a", "b", "c"]
    for register, bits in BIT_ORDER_EXPECTED.items():
        counts = result.counts(register=register)
        if PROFILES.get(backend, PROFILES["aer"]).noise is None:
            assert counts == {bits: SHOTS}, f"register {register}: {counts}"
        else:
            # Readout and gate noise flip some shots; the right string still dominates.
            assert max(counts, key=lambda k: counts[k]) == bits, f"register {register}: {counts}"
            assert_within_noise(counts, {bits: 1.0}, PROFILES[backend].noise or 0.0)


def check_sweep(client: Client, backend: str) -> None:
    result = client.run(
        SWEEP,
        backend=backend,
        shots=SHOTS,
        seed=11,
        parameter_values=[[t] for t in THETAS],
    ).sampler()
    assert result.shape == (len(THETAS),)
    for index, theta in enumerate(THETAS):
        _check(client, backend, result.counts(index), _sweep_probabilities(theta))


def check_same_samples_as_aer(client: Client, backend: str) -> None:
    """Exact backends sample from the same probabilities with the same seeded generator: the
    same seed gives the same shots, in order, on every one of them (a draw differs only if
    the probabilities differ by more than float rounding at a cumulative boundary: ~1e-15 per
    shot)."""
    circuit = H3 + "qubit[3] q; bit[3] c; ry(1.3) q[0]; h q[1]; cx q[1], q[2]; c = measure q;"
    ours = client.run(circuit, backend=backend, shots=256, seed=2024).sampler().bitstrings()
    aer = client.run(circuit, backend="aer", shots=256, seed=2024).sampler().bitstrings()
    assert ours == aer


# --------------------------------------------------------------------------- the suite


@pytest.mark.parametrize("backend", FLEET)
def test_bit_order_across_registers(client: Client, backend: str) -> None:
    check_bit_order(client, backend)


@pytest.mark.parametrize("backend", FLEET)
def test_distribution_over_a_parameter_sweep(client: Client, backend: str) -> None:
    check_sweep(client, backend)


@pytest.mark.parametrize("backend", EXACT)
def test_a_seed_gives_aer_s_samples(client: Client, backend: str) -> None:
    check_same_samples_as_aer(client, backend)


@pytest.mark.parametrize("backend", FLEET)
def test_seeds_are_reproducible(client: Client, backend: str) -> None:
    circuit = H3 + "qubit[2] q; bit[2] c; h q; c = measure q;"

    def draw(seed: int) -> list[str]:
        return client.run(circuit, backend=backend, shots=64, seed=seed).sampler().bitstrings()

    first = draw(99)
    assert draw(99) == first
    # 64 fair two-bit draws repeat by chance with probability 4^-64.
    assert draw(100) != first


@pytest.mark.parametrize("backend", FLEET)
def test_estimator_observables(client: Client, backend: str) -> None:
    job = client.submit_pubs(
        [
            estimator_pub(
                STAR,
                STAR_OBSERVABLES,
                # Shape (4, 1): broadcast against the 5 observables to (4, 5).
                parameter_values=[[[t]] for t in STAR_ANGLES],
                precision=0.0,
            )
        ],
        backend=backend,
    )
    done = client.wait(job.name, timeout=120)
    assert done.state == "SUCCEEDED", done.error
    result = client.get_result(job.name).estimator()
    assert result.shape == (len(STAR_ANGLES), len(STAR_OBSERVABLES))
    got = np.array(result.expectation_values).reshape(result.shape)
    want = np.array([_star_expectations(t) for t in STAR_ANGLES])
    profile = PROFILES[backend]
    tolerance = 1e-7 if profile.noise is None else profile.estimator_noise
    assert np.abs(got - want).max() <= tolerance, f"{got} vs {want}"
    if backend.startswith("aer-noisy"):
        # The star cannot sit on a line of qubits: this backend ran it on a routed layout, so
        # the observables were mapped through a layout that is not the identity.
        assert done.execution is not None
        assert done.execution.layouts[0] != [0, 1, 2, 3]


@pytest.mark.parametrize("backend", FLEET)
def test_a_single_observable_without_a_sweep_is_one_value(client: Client, backend: str) -> None:
    # Shape (), as Qiskit gives a single observable with one binding (it was (1,)).
    t = STAR_ANGLES[1]
    result = client.estimate(STAR, "XXXX", backend=backend, parameter_values=[t], precision=0.0)
    assert result.shape == ()
    profile = PROFILES[backend]
    tolerance = 1e-7 if profile.noise is None else profile.estimator_noise
    assert abs(result.expectation_values[0] - math.sin(t)) <= tolerance


@pytest.mark.parametrize("backend", FLEET)
def test_estimator_precision_gives_standard_errors(client: Client, backend: str) -> None:
    precision = 0.01
    pub = client.estimate(
        STAR, ["IIIZ"], parameter_values=[[0.9]], precision=precision, backend=backend, seed=3
    )
    if PROFILES[backend].sampled_estimator:
        # Its own standard error for shots chosen to reach the precision asked for.
        assert 0 < pub.standard_errors[0] <= 3 * precision, pub.standard_errors
    else:
        assert pub.standard_errors == [precision]
    bound = 5.5 * precision + PROFILES[backend].estimator_noise
    assert abs(pub.expectation_values[0] - math.cos(0.9)) <= bound


MID_CIRCUIT: dict[str, tuple[str, dict[str, str]]] = {
    # x, measure, x again, measure the same qubit: c = "01".
    "MID_CIRCUIT_MEASUREMENT": (
        "qubit[1] q; bit[2] c; x q[0]; c[0] = measure q[0]; x q[0]; c[1] = measure q[0];",
        {"c": "01"},
    ),
    # A flipped qubit reset, then measured: 0; its neighbour flipped: c = "10".
    "RESET": (
        "qubit[2] q; bit[2] c; x q[0]; x q[1]; reset q[0]; c[0] = measure q[0]; "
        "c[1] = measure q[1];",
        {"c": "10"},
    ),
    # Feed-forward: a measured 1 flips q[1]: c = "11".
    "CONTROL_FLOW": (
        "qubit[2] q; bit[2] c; x q[0]; c[0] = measure q[0]; if (c[0]) { x q[1]; } "
        "c[1] = measure q[1];",
        {"c": "11"},
    ),
}


@pytest.mark.parametrize("feature", sorted(MID_CIRCUIT))
@pytest.mark.parametrize("backend", FLEET)
def test_declared_features_work_and_others_are_refused(
    client: Client, backend: str, feature: str
) -> None:
    text, expected = MID_CIRCUIT[feature]
    declared = feature in client.get_backend(backend).features
    if not declared:
        with pytest.raises(QGatewayError) as info:
            client.run(H3 + text, backend=backend, shots=16)
        assert info.value.reason == "UNSUPPORTED_FEATURE", info.value
        return
    # Unseeded: a backend that cannot seed such a circuit must still run it.
    counts = client.run(H3 + text, backend=backend, shots=200).sampler().counts(register="c")
    if PROFILES[backend].noise is None:
        assert counts == {expected["c"]: 200}
    else:
        assert max(counts, key=lambda k: counts[k]) == expected["c"]


# r holds 1 in every shot; `r == 3` can never hold for a one-bit register, so q[1] stays 0
# (c[0] = 0) and, where there is an else, q[2] is flipped. Aer cut 3 to r's width (1) and took
# the branch.
UNREACHABLE = {
    "qasm3-if-else": (
        H3 + "qubit[3] q; bit[1] r; bit[2] c; x q[0]; r[0] = measure q[0];\n"
        "if (r == 3) { x q[1]; } else { x q[2]; }\n"
        "c[0] = measure q[1]; c[1] = measure q[2];",
        "10",
    ),
    "qasm2-if": (
        'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2]; creg r[1]; creg c[2];\n'
        "x q[0]; measure q[0] -> r[0];\nif (r == 3) x q[1];\n"
        "measure q[1] -> c[0]; measure q[0] -> c[1];",
        "10",
    ),
}


@pytest.mark.parametrize("form", sorted(UNREACHABLE))
@pytest.mark.parametrize("backend", FLEET)
def test_a_register_compared_with_a_value_it_cannot_hold_never_branches(
    client: Client, backend: str, form: str
) -> None:
    text, expected = UNREACHABLE[form]
    if "CONTROL_FLOW" not in client.get_backend(backend).features:
        with pytest.raises(QGatewayError) as info:
            client.run(text, backend=backend, shots=16)
        assert info.value.reason == "UNSUPPORTED_FEATURE", info.value
        return
    # Unseeded: Braket cannot seed a circuit it runs shot by shot.
    counts = client.run(text, backend=backend, shots=200).sampler().counts(register="c")
    if PROFILES[backend].noise is None:
        assert counts == {expected: 200}
    else:
        assert max(counts, key=lambda k: counts[k]) == expected


# Gate angles far past 2 pi, one at the top level and one inside a user gate. The transpiler adds
# constants to angles (rx(t) becomes rz(t + pi) between two sx on the fakes' sx/rz basis), which
# vanish in rounding next to 1e17: unreduced, the noisy Aer and IBM fakes read +0.886 for Z0.
HUGE_ANGLES = H3 + "gate big a { ry(3e200) a; }\nqubit[2] q; rx(1e17) q[0]; big q[1];\n"


@pytest.mark.parametrize("backend", FLEET)
def test_huge_angles_mean_what_they_say(client: Client, backend: str) -> None:
    job = client.submit_pubs(
        [estimator_pub(HUGE_ANGLES, ["IZ", "ZI"], precision=0.0)], backend=backend
    )
    done = client.wait(job.name, timeout=120)
    assert done.state == "SUCCEEDED", done.error
    got = np.array(client.get_result(job.name).estimator().expectation_values)
    # <Z> after rx(t) or ry(t) on |0> is cos(t); math.cos reduces its argument exactly.
    want = np.array([math.cos(1e17), math.cos(3e200)])  # -0.886, -0.504
    profile = PROFILES[backend]
    tolerance = 1e-7 if profile.noise is None else profile.estimator_noise
    assert np.abs(got - want).max() <= tolerance, f"{got} vs {want}"


# A user gate named like a standard one, under `negctrl @` and `ctrl @`: Qiskit controls a gate by
# its name (a standard CH here, though this `h` is an X), and a definition read from a gate with
# open controls and stored back had its controls closed: every backend was wrong, Braket
# differently from the others.
SHADOWED_CONTROLS = (
    "OPENQASM 3.0;\ngate h a { U(pi, 0, pi) a; }\nqubit[3] q; bit[3] c;\n"
    "negctrl @ h q[0], q[1]; ctrl @ h q[1], q[2]; c = measure q;\n"
)


@pytest.mark.parametrize("backend", FLEET)
def test_controlled_user_gates_named_like_standard_ones_run_their_definition(
    client: Client, backend: str
) -> None:
    counts = client.run(SHADOWED_CONTROLS, backend=backend, shots=SHOTS, seed=8).sampler().counts()
    # q0 stays 0, so the open control flips q1; q1 then flips q2.
    _check(client, backend, counts, {"110": 1.0})


# `pow` over such a controlled gate: the reader folds it into a matrix built from the standard CH
# (every backend ran sqrt(CH) twice, a CH, leaving q1 in superposition).
POWERED_SHADOWED_CONTROL = (
    "OPENQASM 3.0;\ngate h a { U(pi, 0, pi) a; }\nqubit[2] q; bit[2] c;\n"
    "U(pi, 0, pi) q[0]; pow(0.5) @ ctrl @ h q[0], q[1]; pow(0.5) @ ctrl @ h q[0], q[1];\n"
    "c = measure q;\n"
)


@pytest.mark.parametrize("backend", FLEET)
def test_a_power_of_a_controlled_user_gate_named_like_a_standard_one_runs_its_definition(
    client: Client, backend: str
) -> None:
    counts = client.run(POWERED_SHADOWED_CONTROL, backend=backend, shots=SHOTS, seed=8)
    # Two square roots of a CX with q0 set: q1 flips.
    _check(client, backend, counts.sampler().counts(), {"11": 1.0})


@pytest.mark.parametrize("backend", FLEET)
def test_declared_qubit_count_is_the_limit(client: Client, backend: str) -> None:
    """n qubits are accepted (they run, or only the memory budget refuses them, as for a
    64-qubit statevector); n + 1 are refused for their number."""
    n = client.get_backend(backend).num_qubits
    fits = H3 + f"qubit[{n}] q; bit[1] c; x q[{n - 1}]; c[0] = measure q[{n - 1}];"
    try:
        counts = client.run(fits, backend=backend, shots=8, seed=1).sampler().counts()
    except QGatewayError as exc:
        assert exc.reason == "MEMORY_BUDGET_EXCEEDED", exc
    else:
        assert max(counts, key=lambda k: counts[k]) == "1"
    with pytest.raises(QGatewayError) as info:
        client.run(H3 + f"qubit[{n + 1}] q; bit[1] c; c[0] = measure q[0];", backend=backend)
    assert info.value.reason == "TOO_MANY_QUBITS", info.value


@pytest.mark.parametrize("backend", FLEET)
def test_a_circuit_built_for_the_declared_target_runs_as_its_physics_says(
    client: Client, backend: str
) -> None:
    """The claim of GetBackendTarget: a circuit transpiled by the client for that target, in
    its gates and on its coupling map, runs unchanged and gives the ideal distribution (exact
    backends) or one within the noise budget."""
    import qiskit
    from qgateway.qiskit_target import to_target
    from qiskit import qasm3
    from qiskit.quantum_info import Statevector

    target = to_target(client.get_backend_target(backend))
    circuit = qiskit.QuantumCircuit(3)
    circuit.h(0)
    circuit.cx(0, 1)
    circuit.ry(0.8, 2)
    circuit.cz(1, 2)
    circuit.rx(1.7, 1)
    circuit.swap(0, 2)
    ideal_state = Statevector(circuit)
    ideal = {
        format(i, "03b"): float(p) for i, p in enumerate(ideal_state.probabilities()) if p > 1e-12
    }
    circuit.measure_all()
    isa = qiskit.transpile(circuit, target=target, optimization_level=1, seed_transpiler=7)
    names = {i.operation.name for i in isa.data} - {"measure", "barrier"}
    assert names <= set(target.operation_names), names
    counts = client.run(qasm3.dumps(isa), backend=backend, shots=SHOTS, seed=8).sampler().counts()
    _check(client, backend, counts, ideal)


@pytest.mark.parametrize("backend", ["braket-sv", "braket-dm"])
def test_braket_refuses_a_seed_it_cannot_honour(client: Client, backend: str) -> None:
    """LocalSimulator takes no seed: a circuit that must run shot by shot (mid-circuit
    measurement) cannot be reproduced, so a seeded job is refused rather than silently
    unseeded (the unseeded run is in test_declared_features_work_and_others_are_refused)."""
    text, _ = MID_CIRCUIT["MID_CIRCUIT_MEASUREMENT"]
    with pytest.raises(QGatewayError) as info:
        client.run(H3 + text, backend=backend, shots=16, seed=4)
    assert info.value.reason == "UNSUPPORTED_FEATURE", info.value
    assert "seed" in str(info.value)
    # Unseeded, it runs, and the job claims no seed (its shots cannot be reproduced).
    job = client.wait(client.submit_pubs([sampler_pub(H3 + text, shots=16)], backend=backend).name)
    assert job.state == "SUCCEEDED" and job.execution is not None
    assert job.execution.seed is None
    # A terminal circuit on the same backend is seeded, and says so.
    seeded = client.wait(
        client.submit_pubs([sampler_pub(BIT_ORDER, shots=16)], backend=backend, seed=4).name
    )
    assert seeded.execution is not None and seeded.execution.seed == 4
    # Outcomes are one integer per shot: 65 classical bits are refused at once, not after the
    # job waited in the queue.
    wide = "qubit[1] q; bit[65] c; c[64] = measure q[0];"
    with pytest.raises(QGatewayError) as info:
        client.submit_pubs([sampler_pub(H3 + wide, shots=4)], backend=backend)
    assert info.value.reason == "UNSUPPORTED_FEATURE", info.value
    assert info.value.metadata.get("feature") == "clbits"


@pytest.mark.parametrize("backend", sorted(PROFILES))
def test_a_delay_is_a_no_op_on_every_local_simulator(client: Client, backend: str) -> None:
    """Braket's and PennyLane's targets had no delay, so the transpiler refused these circuits
    (TRANSPILE_FAILED) though their writers drop delays; one after a measurement also took
    the circuit off the probability path (PennyLane then refused it). The fake-device targets
    (IBM, and Aer with its noise) have timing and refused an unscheduled delay, as Qiskit's own
    transpile does: the gateway schedules such a circuit (a no-op within their noise)."""
    after = (
        "qubit[2] q; bit[2] c; x q[0]; c[0] = measure q[0]; delay[10ns] q[0]; x q[1];"
        " c[1] = measure q[1];"
    )
    for text, ideal in (
        ("qubit[2] q; bit[2] c; x q[0]; delay[100ns] q[0]; c = measure q;", {"01": 1.0}),
        (after, {"11": 1.0}),
    ):
        counts = client.run(H3 + text, backend=backend, shots=SHOTS, seed=3).sampler().counts()
        _check(client, backend, counts, ideal)


@pytest.mark.parametrize("backend", sorted(PROFILES))
def test_classical_bits_nothing_writes_read_zero_everywhere(client: Client, backend: str) -> None:
    """A sampler circuit with classical bits but no measurement: every bit keeps its initial
    0 (Aer's and Braket's answer). PennyLane, which samples measured qubits only, refused it
    with a reason about how many qubits it measures."""
    text = "qubit[2] q; bit[3] c; h q[0]; cx q[0], q[1];"
    counts = client.run(H3 + text, backend=backend, shots=SHOTS, seed=3).sampler().counts()
    assert counts == {"000": SHOTS}


def test_noisy_braket_refuses_at_submission_what_its_worker_cannot_run(client: Client) -> None:
    """A reset, then a qubit measured twice: the front end sees no mid-circuit measurement,
    but Braket would run it path by path and drop the noise. It was accepted, queued, and
    failed in the worker; now it is refused before a job exists."""
    text = "qubit[2] q; bit[2] c; reset q[1]; h q[0]; c[0] = measure q[0]; c[1] = measure q[0];"
    with pytest.raises(QGatewayError) as info:
        client.submit_pubs([sampler_pub(H3 + text, shots=8)], backend="braket-dm-noisy")
    assert info.value.reason == "UNSUPPORTED_FEATURE", info.value
    assert info.value.metadata.get("feature") == "mid_circuit_measurement"
    # The same circuit runs on the noiseless device (it branches there, as Braket does).
    job = client.wait(
        client.submit_pubs([sampler_pub(H3 + text, shots=8)], backend="braket-dm").name
    )
    assert job.state == "SUCCEEDED", job


def test_braket_noise_matches_its_channels(client: Client) -> None:
    """braket-dm-noisy's channels, by hand on X then measure: the 1-qubit depolarizing channel
    of probability p leaves |1> with weight 1 - 2p/3, then the readout flip r mixes it:
    P(1) = (1 - 2p/3)(1 - r) + (2p/3) r."""
    from tests.conformance.conftest import BRAKET_NOISE

    p, r = BRAKET_NOISE["depolarizing_1q"], BRAKET_NOISE["readout_flip"]
    one = (1 - 2 * p / 3) * (1 - r) + (2 * p / 3) * r
    counts = (
        client.run(
            H3 + "qubit[1] q; bit[1] c; x q[0]; c[0] = measure q[0];",
            backend="braket-dm-noisy",
            shots=20_000,
            seed=6,
        )
        .sampler()
        .counts()
    )
    assert_counts_follow(counts, {"1": one, "0": 1 - one})


# --------------------------------------------------------------------------- the suite's test

CHECKS: dict[str, Callable[[Client, str], None]] = {
    "bit order": check_bit_order,
    "sweep": check_sweep,
    "same samples as aer": check_same_samples_as_aer,
}


@pytest.mark.parametrize("check", sorted(CHECKS))
def test_the_suite_fails_a_backend_that_reverses_bit_order(client: Client, check: str) -> None:
    """Aer behind a wrapper that reverses the measured qubits' order (tests/conformance/
    reversed_bits.py) must fail each check; the same check passes on Aer itself above."""
    with pytest.raises(AssertionError):
        CHECKS[check](client, REVERSED)
