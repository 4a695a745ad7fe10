"""The job protocol, shared by the services and `functions/dead_letter` (never copied).

`records` (the record, its compare-and-swap update and the job id), `results` (the result
CloudEvent and the publish-once claim) and `uploads` (upload filters and an upload's model name)
depend on nothing but the standard library, `consumer.errors` and `rvc_core.names` (the model-name
rule), so the function's archive (functions/dead_letter/ARCHIVE) carries them.
`metadata` and `intake` build jobs from uploads and requests on the services' side.
"""
