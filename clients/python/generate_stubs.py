"""Generates the gRPC stubs of consent_client from the repository's proto/ files.

Run by the package build (setup.py) and by CI before the tests; the generated modules go to
consent_client/_pb/ (not committed: they are always made from the current protos).

    python generate_stubs.py [PROTO_DIR]
"""

import pathlib
import re
import sys

HERE = pathlib.Path(__file__).resolve().parent
OUT = HERE / "consent_client" / "_pb"


def generate(proto_dir: pathlib.Path = HERE.parent.parent / "proto") -> None:
    from grpc_tools import protoc  # imported here: only the build needs grpcio-tools

    import grpc_tools

    protos = sorted(str(p.relative_to(proto_dir)) for p in proto_dir.rglob("*.proto"))
    if not protos:
        raise SystemExit(f"no .proto files under {proto_dir}")
    OUT.mkdir(parents=True, exist_ok=True)
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{proto_dir}",
            f"-I{well_known}",
            f"--python_out={OUT}",
            f"--pyi_out={OUT}",
            f"--grpc_python_out={OUT}",
            *protos,
        ]
    )
    if code != 0:
        raise SystemExit(f"protoc failed ({code})")
    # The generated modules import each other as `consent.v1`; make that a subpackage.
    for path in OUT.rglob("*.py*"):
        text = path.read_text()
        fixed = re.sub(r"\bfrom consent\.v1 import\b", "from consent_client._pb.consent.v1 import", text)
        if fixed != text:
            path.write_text(fixed)
    for package in [OUT, OUT / "consent", OUT / "consent" / "v1"]:
        (package / "__init__.py").touch()


if __name__ == "__main__":
    generate(pathlib.Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else HERE.parent.parent / "proto")
    print(f"stubs generated in {OUT}")
