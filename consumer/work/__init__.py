"""The work: tokens, the lease (taking and keeping it), one slice of a job and its answer, the slice
budget, the slice's dataset, finalisation, the work-dir mirror, artifacts."""
