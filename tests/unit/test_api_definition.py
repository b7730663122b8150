"""The API definition: Buf lint clean, no breaking change against the frozen v1 baseline, every
request field annotated, no unsigned integers, and committed generated code that is current.

buf cannot fetch googleapis from its registry here, so every check runs on a descriptor image
that grpc_tools.protoc builds over protos/ and googleapis-common-protos' .proto files.
"""

from __future__ import annotations

import filecmp
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.api import field_behavior_pb2, resource_pb2
from google.protobuf import descriptor, descriptor_pb2
from qgateway.v1 import (
    backend_service_pb2,
    job_service_pb2,
    session_service_pb2,
)

from scripts.gen_protos import BASELINE_IMAGE, DEFAULT_OUT, PROTO_ROOT, build_image, generate

BIN = Path(sys.executable).parent
SERVICES = [
    job_service_pb2.DESCRIPTOR.services_by_name["JobService"],
    backend_service_pb2.DESCRIPTOR.services_by_name["BackendService"],
    session_service_pb2.DESCRIPTOR.services_by_name["SessionService"],
]
UNSIGNED = {
    descriptor.FieldDescriptor.TYPE_UINT32,
    descriptor.FieldDescriptor.TYPE_UINT64,
    descriptor.FieldDescriptor.TYPE_FIXED32,
    descriptor.FieldDescriptor.TYPE_FIXED64,
}


def _buf(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "buf"), *args, "--path", "qgateway", "--config", str(PROTO_ROOT / "buf.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("image") / "qgateway-v1.binpb"
    build_image(path)
    return path


def test_buf_lint_standard_is_clean(image: Path) -> None:
    result = _buf("lint", str(image))
    assert result.returncode == 0, result.stdout + result.stderr


def test_buf_lint_on_the_image_does_find_problems(tmp_path: Path) -> None:
    # The lint above must be able to fail: a canary proto with a lint error is reported.
    root = tmp_path / "protos"
    shutil.copytree(PROTO_ROOT / "qgateway", root / "qgateway")
    (root / "qgateway" / "v1" / "canary.proto").write_text(
        'syntax = "proto3";\npackage qgateway.v1;\nmessage canary_message { int32 x = 1; }\n'
    )
    image = tmp_path / "canary.binpb"
    build_image(image, proto_root=root)
    result = _buf("lint", str(image))
    assert result.returncode != 0 and "canary_message" in result.stdout, result.stdout


def test_no_breaking_change_against_the_v1_baseline(image: Path) -> None:
    # The baseline is the frozen v1 (protos/baseline/); later changes must be additive.
    result = _buf("breaking", str(image), "--against", str(BASELINE_IMAGE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_breaking_check_does_catch_a_breaking_change(tmp_path: Path) -> None:
    root = tmp_path / "protos"
    shutil.copytree(PROTO_ROOT / "qgateway", root / "qgateway")
    backend = root / "qgateway" / "v1" / "backend.proto"
    text = backend.read_text()
    assert "int32 num_qubits = 4" in text
    backend.write_text(text.replace("int32 num_qubits = 4", "int64 num_qubits = 4"))
    image = tmp_path / "changed.binpb"
    build_image(image, proto_root=root)
    result = _buf("breaking", str(image), "--against", str(BASELINE_IMAGE))
    assert result.returncode != 0 and "num_qubits" in result.stdout, result.stdout


def _request_messages() -> Iterator[descriptor.Descriptor]:
    """Every message reachable from an RPC's request, within qgateway.v1 (map entries too)."""
    seen: set[str] = set()
    todo = [method.input_type for service in SERVICES for method in service.methods]
    while todo:
        message = todo.pop()
        if message.full_name in seen or not message.full_name.startswith("qgateway.v1."):
            continue
        seen.add(message.full_name)
        yield message
        todo.extend(f.message_type for f in message.fields if f.message_type is not None)


def _behaviors(field: descriptor.FieldDescriptor) -> list[int]:
    options = field.GetOptions()
    return list(options.Extensions[field_behavior_pb2.field_behavior])


def test_every_request_field_has_a_field_behavior() -> None:
    missing = [
        field.full_name
        for message in _request_messages()
        if not message.GetOptions().map_entry
        for field in message.fields
        if not _behaviors(field)
    ]
    assert not missing, f"request fields without google.api.field_behavior: {missing}"


def test_request_walk_covers_the_nested_inputs() -> None:
    names = {m.full_name for m in _request_messages()}
    for expected in ("qgateway.v1.JobSpec", "qgateway.v1.PauliTerm", "qgateway.v1.Session"):
        assert expected in names


def _all_messages() -> Iterator[descriptor.Descriptor]:
    files = {m.DESCRIPTOR for m in (job_service_pb2, backend_service_pb2, session_service_pb2)}
    todo = list(files)
    seen: set[str] = set()
    while todo:
        file = todo.pop()
        if file.name in seen or file.package != "qgateway.v1":
            continue
        seen.add(file.name)
        todo.extend(file.dependencies)
        stack = list(file.message_types_by_name.values())
        while stack:
            message = stack.pop()
            yield message
            stack.extend(message.nested_types)


def test_no_unsigned_integer_fields() -> None:
    unsigned = [f.full_name for m in _all_messages() for f in m.fields if f.type in UNSIGNED]
    assert not unsigned, f"AIP-141: signed integer types only: {unsigned}"


def test_resources_are_annotated_and_name_fields_reference_them() -> None:
    resources = {}
    for message in _all_messages():
        resource = message.GetOptions().Extensions[resource_pb2.resource]
        if resource.type:
            resources[resource.type] = list(resource.pattern)
    assert resources == {
        "qgateway.dev/Backend": ["backends/{backend}"],
        "qgateway.dev/BackendTarget": ["backends/{backend}/target"],
        "qgateway.dev/Job": ["jobs/{job}"],
        "qgateway.dev/JobResult": ["jobs/{job}/result"],
        "qgateway.dev/Session": ["sessions/{session}"],
    }
    for service in SERVICES:
        for method in service.methods:
            name = method.input_type.fields_by_name.get("name")
            if name is None:
                continue
            reference = name.GetOptions().Extensions[resource_pb2.resource_reference]
            assert reference.type in resources, f"{method.full_name}: name without reference"
            assert field_behavior_pb2.REQUIRED in _behaviors(name)


def test_the_baseline_is_a_descriptor_set_of_v1() -> None:
    baseline = descriptor_pb2.FileDescriptorSet.FromString(BASELINE_IMAGE.read_bytes())
    names = {f.name for f in baseline.file}
    assert "qgateway/v1/job_service.proto" in names
    assert "qgateway/v1/session_service.proto" in names


def test_generated_code_is_current(tmp_path: Path) -> None:
    # Regenerate and compare: a hash of the inputs would miss a changed generator.
    generate(tmp_path)
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    committed_dir = DEFAULT_OUT / "qgateway" / "v1"
    committed = sorted(
        p.relative_to(DEFAULT_OUT)
        for p in committed_dir.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )
    assert fresh == committed, "generated file set differs: run `make protos`"
    stale = [str(p) for p in fresh if not filecmp.cmp(tmp_path / p, DEFAULT_OUT / p, shallow=False)]
    assert not stale, f"stale generated code (run `make protos`): {stale}"
