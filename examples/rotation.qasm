OPENQASM 3.0;
include "stdgates.inc";
// One parameter: sweep theta to trace P(1) = sin^2(theta / 2).
input float[64] theta;
qubit[1] q;
bit[1] c;
ry(theta) q[0];
c[0] = measure q[0];
