"""Qiskit Aer simulators (entry point "aer")."""
