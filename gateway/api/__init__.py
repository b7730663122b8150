"""gRPC servicers: proto <-> domain translation only, one module per service."""
