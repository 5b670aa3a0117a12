"""Generates Python modules for the API from proto/ with grpcio-tools into
a temp dir, and imports them: what any Python client of Sluice does."""

import importlib
import importlib.resources
import sys
import tempfile

from grpc_tools import protoc


def generate(proto_dir, names):
    """Compiles proto/sluice/v1/<name>.proto for each name and returns the
    (messages, service stubs) module pair of each, in order."""
    out = tempfile.mkdtemp(prefix="sluice-py-")
    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    for name in names:
        proto = f"sluice/v1/{name}.proto"
        rc = protoc.main([
            "grpc_tools.protoc",
            f"-I{proto_dir}",
            f"-I{well_known}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            proto,
        ])
        if rc != 0:
            sys.exit(f"protoc failed on {proto} with {rc}")
    sys.path.insert(0, out)
    modules = []
    for name in names:
        modules.append(importlib.import_module(f"sluice.v1.{name}_pb2"))
        modules.append(importlib.import_module(f"sluice.v1.{name}_pb2_grpc"))
    return modules
