"""Generate the Python code for protos/ into clients/python (or another directory).

Used by `make protos` and by the staleness test, which generates into a temporary directory
and compares file by file.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
DEFAULT_OUT = ROOT / "clients" / "python"
# The frozen v1 contract: `buf breaking` compares every change against it (see protos/CHANGELOG.md).
BASELINE_IMAGE = PROTO_ROOT / "baseline" / "qgateway-v1.binpb"


def proto_files(proto_root: Path = PROTO_ROOT) -> list[Path]:
    return sorted(proto_root.glob("qgateway/**/*.proto"))


def include_paths(proto_root: Path = PROTO_ROOT) -> list[str]:
    """protos/, protobuf's well-known types, and googleapis-common-protos (google/api,
    google/rpc): the package ships its .proto files beside the generated modules."""
    import google.api.field_behavior_pb2 as field_behavior

    googleapis = Path(field_behavior.__file__).resolve().parent.parent.parent
    return [str(proto_root), str(resources.files("grpc_tools") / "_proto"), str(googleapis)]


def _protoc(args: list[str], proto_root: Path = PROTO_ROOT) -> None:
    includes = [f"-I{path}" for path in include_paths(proto_root)]
    files = [str(p.relative_to(proto_root)) for p in proto_files(proto_root)]
    if protoc.main(["grpc_tools.protoc", *includes, *args, *files]) != 0:
        raise SystemExit("protoc failed")


def build_image(out: Path, *, source_info: bool = True, proto_root: Path = PROTO_ROOT) -> None:
    """A descriptor image of qgateway/v1 and everything it imports, for `buf lint` and
    `buf breaking` (buf cannot fetch googleapis from its registry here)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    flags = ["--include_imports", f"--descriptor_set_out={out}"]
    _protoc([*flags, "--include_source_info"] if source_info else flags, proto_root)


def generate(out_dir: Path) -> None:
    """Writes *_pb2.py, *_pb2.pyi and *_pb2_grpc.py for every proto under out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    _protoc(
        [
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
        ]
    )
    for package_dir in {out_dir / Path(f).parent for f in files}:
        init = package_dir / "__init__.py"
        if not init.exists():
            init.write_text('"""Generated from protos/; do not edit."""\n')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--baseline",
        action="store_true",
        help=f"write the frozen-contract image {BASELINE_IMAGE.relative_to(ROOT)} instead",
    )
    parser.add_argument(
        "--image", type=Path, help="write a descriptor image (with source info) for buf instead"
    )
    args = parser.parse_args()
    if args.baseline:
        build_image(BASELINE_IMAGE, source_info=False)
    elif args.image:
        build_image(args.image)
    else:
        generate(args.out)


if __name__ == "__main__":
    sys.exit(main())
