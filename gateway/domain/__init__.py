"""Pure domain model: no gRPC, no store, no vendor SDK."""
