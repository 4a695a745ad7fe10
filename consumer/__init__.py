"""consumer: the event-driven training service (shared/ARCHITECTURE.md).

The flow, by folder: `edge` (what arrives: deliveries, task requests) → `handlers` (one thin module
per endpoint) → `jobs` (the job protocol: records, results, upload rules; metadata and intake) →
`work` (tokens, the lease, slices, finalisation, the work-dir mirror, artifacts) over `adapters`
(storage, messaging, the task queue, retries). `local` runs it all on one machine. `services`
wires one process's parts for a role (`all`, `api` or `worker`).
"""
