"""The edge: what arrives over HTTP (push deliveries, task requests) turned into typed values."""
