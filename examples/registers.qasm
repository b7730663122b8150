OPENQASM 3.0;
include "stdgates.inc";
// X on qubits 0 and 3, measured into two registers: expect a = "01" and b = "010" every shot
// (character 0 is the highest bit of each register).
qubit[5] q;
bit[2] a;
bit[3] b;
x q[0];
x q[3];
a[0] = measure q[0];
a[1] = measure q[1];
b[0] = measure q[2];
b[1] = measure q[3];
b[2] = measure q[4];
