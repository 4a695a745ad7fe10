"""Adapters to the outside: storage (gs://, file://), messaging (Pub/Sub, local bus), the task
queue (Cloud Tasks, local) and the retry policy they share. Clients are created when a service is
built, never at import time."""
