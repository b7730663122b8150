"""PennyLane backends (lightning.qubit, default.qubit): the only package that imports pennylane."""
