OPENQASM 3.0;
include "stdgates.inc";
// A Bell pair without measurements: the state `qgateway estimate` reads.
qubit[2] q;
h q[0];
cx q[0], q[1];
