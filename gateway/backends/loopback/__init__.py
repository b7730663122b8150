"""A provider-like backend: a job service in its own process, and the adapter that uses it.

`service` is the remote job service (a stand-in for a cloud QPU or simulator service: jobs are
created by REST calls, idempotent on a client token, and complete later); `adapter` is the
backend (entry point "loopback"): the Qiskit front end compiles, a REMOTE runner submits,
follows, cancels and re-attaches over HTTP.
"""
