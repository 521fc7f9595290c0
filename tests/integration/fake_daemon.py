"""A grpcio server on a Unix socket that answers as the test tells it: a
buggy or hostile cofferd, for the clients' tests (test_client_hostile for
libcoffer and cofferctl, test_python_client for the Python package)."""
import os
import tempfile
from concurrent import futures

import grpc


class FakeDaemon:
    """A grpcio server on a Unix socket answering `handlers`
    ({"/service/Method": fn(request bytes, context) -> response bytes}; a
    generator fn(request iterator, context) for a stream)."""

    def __init__(self, handlers, streams=None):
        self.dir = tempfile.mkdtemp(prefix="coffer-fake-")
        self.path = os.path.join(self.dir, "s.sock")
        self.calls = {}
        self.server = grpc.server(futures.ThreadPoolExecutor(16))
        by_service = {}
        for full, fn in handlers.items():
            svc, method = full.strip("/").split("/")
            by_service.setdefault(svc, {})[method] = grpc.unary_unary_rpc_method_handler(
                self.counted(full, fn))
        for full, fn in (streams or {}).items():
            svc, method = full.strip("/").split("/")
            by_service.setdefault(svc, {})[method] = grpc.stream_stream_rpc_method_handler(
                self.counted(full, fn))
        self.server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler(s, m) for s, m in by_service.items()])
        self.server.add_insecure_port("unix:" + self.path)
        self.server.start()

    def counted(self, name, fn):
        def run(req, ctx):
            self.calls[name] = self.calls.get(name, 0) + 1
            return fn(req, ctx)
        return run

    def stop(self):
        self.server.stop(0)
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.rmdir(self.dir)


def listing_repeating(pb):
    """A ListKeys handler whose page tokens alternate: its pages repeat."""
    def handler(req, ctx):
        r = pb.ListKeysRequest.FromString(req)
        nxt = {"": "b", "b": "a", "a": "b"}[r.page_token]
        return pb.ListKeysResponse(keys=[pb.Key(name="k1", type=pb.EC_P256)],
                                   next_page_token=nxt).SerializeToString()
    handler.__name__ = "repeating"
    return handler


def listing_backwards(pb):
    """A ListKeys handler whose second page goes back in name order."""
    def handler(req, ctx):
        r = pb.ListKeysRequest.FromString(req)
        name, nxt = {"": ("m", "m"), "m": ("c", "c")}[r.page_token]
        return pb.ListKeysResponse(keys=[pb.Key(name=name, type=pb.EC_P256)],
                                   next_page_token=nxt).SerializeToString()
    handler.__name__ = "backwards"
    return handler
