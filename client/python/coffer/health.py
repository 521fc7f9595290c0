"""grpc.health.v1.Health/Check, which both of cofferd's sockets answer.

The two messages are built here from a descriptor rather than generated:
a generated module would be a top-level package "grpc" (the proto's
package) that shadows grpcio itself. They are declared under a private
proto package name; on the wire only field numbers count.
"""

from google.protobuf import descriptor_pb2, descriptor_pool

try:   # protobuf >= 4.21
    from google.protobuf.message_factory import GetMessageClass as _message_class
except ImportError:   # pragma: no cover - older python3-protobuf
    from google.protobuf.message_factory import MessageFactory as _Factory
    _message_class = _Factory().GetPrototype

PATH = "/grpc.health.v1.Health/Check"
STATUS_NAMES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}

_fd = descriptor_pb2.FileDescriptorProto(name="coffer/_health.proto",
                                         package="coffer.internal.health", syntax="proto3")
_req = _fd.message_type.add(name="HealthCheckRequest")
_req.field.add(name="service", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
               label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
_resp = _fd.message_type.add(name="HealthCheckResponse")
_resp.field.add(name="status", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_INT32,
                label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
_pool = descriptor_pool.DescriptorPool()
_file = _pool.Add(_fd)
HealthCheckRequest = _message_class(_pool.FindMessageTypeByName(
    "coffer.internal.health.HealthCheckRequest"))
HealthCheckResponse = _message_class(_pool.FindMessageTypeByName(
    "coffer.internal.health.HealthCheckResponse"))
