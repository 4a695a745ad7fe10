"""`rvc-trainer`: the user's command line: submit a dataset, follow, inspect, download, cancel."""
