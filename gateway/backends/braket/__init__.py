"""Amazon Braket's local simulators (braket_sv, braket_dm), fed OpenQASM 3 written from Qiskit."""
