"""What a heavy tenant costs another: a bystander's GetJob and Run alone and while another
client sends validate_only SubmitJobs of a large estimator PUB, at two GIL switch intervals.

    python -m bench.noisy_neighbour [--quick]

Each such request (one observable of --terms Pauli terms, ~14 bytes each; nothing is created,
no quota is charged) is digested and decoded in a thread of the gateway: pure Python that
holds the GIL. Whenever the event loop asks for the GIL back, such a thread keeps it for up to
the interpreter's switch interval, and one call makes the loop ask dozens of times. Two
gateways are measured in one run, the same configuration: one at CPython's default interval
(5 ms), one at the gateway's own (gateway.server.GIL_SWITCH_INTERVAL_S). Traffic goes to
127.0.0.1 only, bounded in count and time. Not a test: it prints figures and ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
from qgateway.v1 import circuit_pb2, job_pb2, job_service_pb2, job_service_pb2_grpc

from bench.gateway_proc import write_config
from gateway.server import GIL_SWITCH_INTERVAL_S
from gateway.testing import GatewayProcess

CPYTHON_DEFAULT_S = 0.005
BACKEND = "backends/aer"
GHZ2 = 'OPENQASM 3.0; include "stdgates.inc"; qubit[2] q; bit[2] c; h q[0]; cx q[0], q[1]; '
GHZ2 += "c = measure q;"
# The gateway's serve with another switch interval (argv: the interval, then serve's own).
_AT_INTERVAL = (
    "import sys, gateway.server as s; s.GIL_SWITCH_INTERVAL_S = float(sys.argv.pop(1)); "
    "from gateway.cli import main; sys.exit(main())"
)


def _sampler_spec() -> job_pb2.JobSpec:
    circuit = circuit_pb2.Circuit(qasm3=GHZ2)
    pub = circuit_pb2.Pub(sampler=circuit_pb2.SamplerPub(circuit=circuit, shots=16))
    return job_pb2.JobSpec(backend=BACKEND, pubs=[pub])


def _heavy_request(terms: int, attacker: int) -> job_service_pb2.SubmitJobRequest:
    observable = circuit_pb2.Observable(
        terms=[circuit_pb2.PauliTerm(pauli="ZZ", coefficient=1.0 + j * 1e-6) for j in range(terms)]
    )
    circuit = circuit_pb2.Circuit(qasm3='OPENQASM 3.0; include "stdgates.inc"; qubit[2] q; h q[0];')
    pub = circuit_pb2.Pub(
        estimator=circuit_pb2.EstimatorPub(circuit=circuit, observables=[observable])
    )
    return job_service_pb2.SubmitJobRequest(
        request_id=f"heavy-{attacker}",
        spec=job_pb2.JobSpec(backend=BACKEND, pubs=[pub]),
        validate_only=True,
    )


def _p50_ms(call: Callable[[], object], calls: int) -> tuple[float, float]:
    latencies = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        latencies.append((time.perf_counter() - start) * 1e3)
        time.sleep(0.02)  # a bystander's pace, not a flood
    return statistics.median(latencies), max(latencies)


def _measure(address: str, terms: int, attackers: int, calls: int) -> dict[str, float]:
    options = [("grpc.max_send_message_length", 64 << 20)]
    with grpc.insecure_channel(address, options=options) as channel:
        stub = job_service_pb2_grpc.JobServiceStub(channel)
        job = stub.SubmitJob(job_service_pb2.SubmitJobRequest(spec=_sampler_spec())).job
        get = lambda: stub.GetJob(job_service_pb2.GetJobRequest(name=job.name))  # noqa: E731
        run = lambda: stub.Run(job_service_pb2.RunRequest(spec=_sampler_spec()))  # noqa: E731
        figures = {"get alone": _p50_ms(get, calls)[0], "run alone": _p50_ms(run, calls)[0]}
        stop = threading.Event()
        sent = [0]

        def attack(index: int) -> None:
            # Each attacker varies its coefficients per request: the gateway's spec cache
            # must not answer the repeat for free.
            request = _heavy_request(terms, index)
            while not stop.is_set():
                sent[0] += 1
                request.spec.pubs[0].estimator.observables[0].terms[0].coefficient = sent[0]
                # A refusal would cost the gateway as much as an answer here.
                with contextlib.suppress(grpc.RpcError):
                    stub.SubmitJob(request, timeout=60)

        threads = [threading.Thread(target=attack, args=(i,)) for i in range(attackers)]
        for thread in threads:
            thread.start()
        try:
            time.sleep(2.0)  # the attack under way before the bystander measures
            began, before = time.perf_counter(), sent[0]
            figures["get under attack"], figures["get max under attack"] = _p50_ms(get, calls)
            figures["run under attack"] = _p50_ms(run, calls)[0]
            figures["attack req/s"] = (sent[0] - before) / (time.perf_counter() - began)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls (about a minute)")
    parser.add_argument("--terms", type=int, default=500_000, help="Pauli terms per request")
    parser.add_argument("--attackers", type=int, default=4, help="concurrent heavy clients")
    args = parser.parse_args(argv)
    calls = 10 if args.quick else 30
    results: dict[float, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="qgw-noisy-") as tmp:
        for interval in (CPYTHON_DEFAULT_S, GIL_SWITCH_INTERVAL_S):
            root = Path(tmp) / f"switch-{interval}"
            root.mkdir()
            config = write_config(
                root / "g.toml",
                root / "data",
                workers=2,
                max_parallel_threads=1,
                optimization_level=1,
            )
            with config.open("a") as text:
                text.write("\n[compiler]\nworkers = 1\n")
            command = (sys.executable, "-c", _AT_INTERVAL, str(interval))
            gateway = GatewayProcess.start(config, root / "gateway.log", command=command)
            try:
                results[interval] = _measure(gateway.address, args.terms, args.attackers, calls)
            finally:
                gateway.terminate()
    print(f"noisy neighbour: {args.attackers} clients sending validate_only SubmitJobs of one")
    print(f"observable of {args.terms:,} Pauli terms; a bystander's calls, p50 of {calls}")
    header = f"  {'switch interval':<28}" + "".join(f"{f'{s * 1e3:g} ms':>12}" for s in results)
    print(header)
    for key in next(iter(results.values())):
        row = "".join(f"{r[key]:>12.1f}" for r in results.values())
        print(f"  {key + (' (ms)' if 'req/s' not in key else ''):<28}{row}")
    for interval, r in results.items():
        print(
            f"  at {interval * 1e3:g} ms: GetJob {r['get under attack'] / r['get alone']:.1f}x, "
            f"Run {r['run under attack'] / r['run alone']:.1f}x alone's p50"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
