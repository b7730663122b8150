"""The Qiskit front end every Qiskit-based adapter shares: OpenQASM 2/3 and QPY readers, the
backend Target."""
