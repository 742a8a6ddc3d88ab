#!/usr/bin/env python3
"""A line-oriented JSON bridge to a CRI (runtime.v1) gRPC endpoint, for tests/cri.rs.

    cri_client.py --address /tmp/x/c.sock --proto tests/cri/api.proto --gen DIR

compiles the proto with grpcio-tools into DIR (api_pb2.py, api_pb2_grpc.py),
connects to unix://ADDRESS and prints one line:

    {"ready": true, "grpc": "<grpcio version>", "protobuf": "<version>"}

Then, for each JSON line on stdin

    {"service": "RuntimeService", "method": "RunPodSandbox", "request": {...}, "timeout": 30}

it makes that unary call (the request in protobuf's JSON mapping, snake_case
field names accepted) and prints one JSON line:

    {"ok": true, "response": {...}}                            on success
    {"ok": false, "code": "NOT_FOUND", "details": "..."}       on a gRPC error

Responses use the proto field names, print fields that have default values
(exit_code 0, state CONTAINER_CREATED, ...), enums as names, int64 as
strings (protobuf's JSON mapping), and top-level bytes fields (ExecSync's
stdout/stderr) as UTF-8 text rather than base64. EOF on stdin ends it.

All the test logic lives in tests/cri.rs; this file only translates.
"""

import argparse
import json
import os
import sys


def compile_proto(proto, gen):
    from grpc_tools import protoc
    import grpc_tools

    os.makedirs(gen, exist_ok=True)
    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    rc = protoc.main([
        "grpc_tools.protoc",
        "-I", os.path.dirname(os.path.abspath(proto)),
        "-I", include,
        "--python_out=" + gen,
        "--grpc_python_out=" + gen,
        os.path.abspath(proto),
    ])
    if rc != 0:
        raise SystemExit("cri_client: protoc failed on %s (exit %d)" % (proto, rc))


def to_dict(msg):
    from google.protobuf import json_format

    kwargs = {"preserving_proto_field_name": True}
    try:  # protobuf >= 5.26
        d = json_format.MessageToDict(msg, always_print_fields_with_no_presence=True, **kwargs)
    except TypeError:  # older protobuf
        d = json_format.MessageToDict(msg, including_default_value_fields=True, **kwargs)
    for field in msg.DESCRIPTOR.fields:
        value = getattr(msg, field.name)
        if isinstance(value, bytes):  # singular bytes field
            d[field.name] = value.decode("utf-8", "replace")
    return d


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--address", required=True, help="containerd's gRPC unix socket path")
    ap.add_argument("--proto", required=True)
    ap.add_argument("--gen", required=True, help="directory for the generated modules")
    args = ap.parse_args()

    compile_proto(args.proto, args.gen)
    sys.path.insert(0, args.gen)
    import grpc
    import google.protobuf
    from google.protobuf import json_format
    import api_pb2
    import api_pb2_grpc

    channel = grpc.insecure_channel("unix://" + args.address)
    grpc.channel_ready_future(channel).result(timeout=30)
    stubs = {
        "RuntimeService": api_pb2_grpc.RuntimeServiceStub(channel),
        "ImageService": api_pb2_grpc.ImageServiceStub(channel),
    }

    def reply(obj):
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    reply({"ready": True, "grpc": grpc.__version__, "protobuf": google.protobuf.__version__})
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            call = json.loads(line)
            service = api_pb2.DESCRIPTOR.services_by_name[call["service"]]
            method = service.methods_by_name[call["method"]]
            request_cls = getattr(api_pb2, method.input_type.name)
            request = json_format.ParseDict(call.get("request", {}), request_cls())
            rpc = getattr(stubs[call["service"]], call["method"])
        except Exception as e:  # a bad request line: the test's bug
            reply({"ok": False, "code": "CLIENT", "details": "%s: %s" % (type(e).__name__, e)})
            continue
        try:
            response = rpc(request, timeout=float(call.get("timeout", 60)))
        except grpc.RpcError as e:
            reply({"ok": False, "code": e.code().name, "details": e.details()})
            continue
        reply({"ok": True, "response": to_dict(response)})
    channel.close()


if __name__ == "__main__":
    main()
