"""The work: tokens, the lease, one slice of a job, finalisation, the work-dir mirror, artifacts."""
