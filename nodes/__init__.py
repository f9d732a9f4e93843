"""Memory nodes: device models, their gRPC server, and the client seam."""
