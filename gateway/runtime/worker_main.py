"""A worker process's entry point: `python -m gateway.runtime.worker_main PARENT [cpus=N,...] LABEL`
(gateway.runtime.worker has the protocol; the label shows in `ps` what the worker is for).

The CPUs of a gateway bound with server.cpu_affinity are given back here, before anything
imports numpy: its OpenBLAS sizes its thread pool from the CPUs the process may use when it
loads, so a worker released after that kept one BLAS thread."""

from __future__ import annotations

import sys

from gateway.runtime import affinity

if __name__ == "__main__":
    affinity.release_worker(sys.argv[2:-1])
    # Imported only now (see above). Roles arrive pickled as gateway.runtime.worker classes.
    from gateway.runtime import worker

    worker.run_worker()
