"""One module per endpoint, each thin: read the request, call the logic, shape the answer."""
