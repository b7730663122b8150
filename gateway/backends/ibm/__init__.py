"""IBM Quantum (entry point "ibm"): qiskit-ibm-runtime's fake backends in local mode offline,
the service with credentials. Only this package imports qiskit_ibm_runtime."""
