from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Circuit(_message.Message):
    __slots__ = ("qasm3", "qasm2", "qpy")
    QASM3_FIELD_NUMBER: _ClassVar[int]
    QASM2_FIELD_NUMBER: _ClassVar[int]
    QPY_FIELD_NUMBER: _ClassVar[int]
    qasm3: str
    qasm2: str
    qpy: bytes
    def __init__(self, qasm3: _Optional[str] = ..., qasm2: _Optional[str] = ..., qpy: _Optional[bytes] = ...) -> None: ...

class BindingsArray(_message.Message):
    __slots__ = ("parameters", "shape", "values")
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    parameters: _containers.RepeatedScalarFieldContainer[str]
    shape: _containers.RepeatedScalarFieldContainer[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, parameters: _Optional[_Iterable[str]] = ..., shape: _Optional[_Iterable[int]] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...

class SamplerPub(_message.Message):
    __slots__ = ("circuit", "parameter_values", "shots")
    CIRCUIT_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_VALUES_FIELD_NUMBER: _ClassVar[int]
    SHOTS_FIELD_NUMBER: _ClassVar[int]
    circuit: Circuit
    parameter_values: BindingsArray
    shots: int
    def __init__(self, circuit: _Optional[_Union[Circuit, _Mapping]] = ..., parameter_values: _Optional[_Union[BindingsArray, _Mapping]] = ..., shots: _Optional[int] = ...) -> None: ...

class PauliTerm(_message.Message):
    __slots__ = ("pauli", "coefficient", "qubits")
    PAULI_FIELD_NUMBER: _ClassVar[int]
    COEFFICIENT_FIELD_NUMBER: _ClassVar[int]
    QUBITS_FIELD_NUMBER: _ClassVar[int]
    pauli: str
    coefficient: float
    qubits: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, pauli: _Optional[str] = ..., coefficient: _Optional[float] = ..., qubits: _Optional[_Iterable[int]] = ...) -> None: ...

class Observable(_message.Message):
    __slots__ = ("terms",)
    TERMS_FIELD_NUMBER: _ClassVar[int]
    terms: _containers.RepeatedCompositeFieldContainer[PauliTerm]
    def __init__(self, terms: _Optional[_Iterable[_Union[PauliTerm, _Mapping]]] = ...) -> None: ...

class EstimatorPub(_message.Message):
    __slots__ = ("circuit", "observables", "observables_shape", "parameter_values", "precision", "single_observable")
    CIRCUIT_FIELD_NUMBER: _ClassVar[int]
    OBSERVABLES_FIELD_NUMBER: _ClassVar[int]
    OBSERVABLES_SHAPE_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_VALUES_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    SINGLE_OBSERVABLE_FIELD_NUMBER: _ClassVar[int]
    circuit: Circuit
    observables: _containers.RepeatedCompositeFieldContainer[Observable]
    observables_shape: _containers.RepeatedScalarFieldContainer[int]
    parameter_values: BindingsArray
    precision: float
    single_observable: bool
    def __init__(self, circuit: _Optional[_Union[Circuit, _Mapping]] = ..., observables: _Optional[_Iterable[_Union[Observable, _Mapping]]] = ..., observables_shape: _Optional[_Iterable[int]] = ..., parameter_values: _Optional[_Union[BindingsArray, _Mapping]] = ..., precision: _Optional[float] = ..., single_observable: _Optional[bool] = ...) -> None: ...

class Pub(_message.Message):
    __slots__ = ("sampler", "estimator")
    SAMPLER_FIELD_NUMBER: _ClassVar[int]
    ESTIMATOR_FIELD_NUMBER: _ClassVar[int]
    sampler: SamplerPub
    estimator: EstimatorPub
    def __init__(self, sampler: _Optional[_Union[SamplerPub, _Mapping]] = ..., estimator: _Optional[_Union[EstimatorPub, _Mapping]] = ...) -> None: ...
