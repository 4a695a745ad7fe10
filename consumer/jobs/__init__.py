"""The job protocol, shared by the services and `functions/dead_letter` (never copied).

`records` (the record and its compare-and-swap update), `results` (the result CloudEvent and the
publish-once claim) and `uploads` (upload filters and the model-name rule; the job id is `records.job_id_for`) depend on
nothing but the standard library and `consumer.errors`, so the function's archive carries them.
`metadata` and `intake` build jobs from uploads and requests on the services' side.
"""
