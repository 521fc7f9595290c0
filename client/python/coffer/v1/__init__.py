"""coffer.v1: the protobuf modules of proto/coffer/v1/coffer.proto.

coffer_pb2 (messages) and coffer_pb2_grpc (service stubs) are generated,
not kept in the source tree: the build writes them beside this file in its
copy of the package (build/client/python/coffer/v1/), `cmake --install` and
the python3-coffer package install them, and in a source checkout one
command makes them (from the top of the tree):

    /usr/bin/python3 -m grpc_tools.protoc -I proto --python_out=client/python \\
        --grpc_python_out=client/python coffer/v1/coffer.proto

They are the standard layout for the protobuf package coffer.v1, so other
code that imports coffer.v1.coffer_pb2 gets these very classes.
"""
