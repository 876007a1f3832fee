"""Azure ML's own error payloads for runs that ended Failed, as users reported them, with where each was found:
what ``amltrain.azure.faults`` is tested against. (code, message) as the run's error carries them (v1:
``get_details()['error']['error']``, v2: run history's ``RunDetails.error.error``); the class each must get.

Where a report shows only the message, the code is the one the service gives that message elsewhere (a preemption
is reported as ``UserError``: MLOpsPython #346's title)."""

from __future__ import annotations

# (class, retried, code, message, source)
PAYLOADS = [
    ("preempted", True, "UserError",
     "AzureMLCompute job failed. PreemptionError: Nodes of this job got pre-empted. Check if the run has failed or "
     "restarted. Reason: Received pre-emption warning signal.",
     "https://github.com/microsoft/MLOpsPython/issues/346 (labelled UserError; also "
     "MicrosoftDocs/azure-docs#66288, Azure/MachineLearningNotebooks#1242)"),
    ("image pull timeout", True, "ServiceError",
     "AzureMLCompute job failed. Running Docker Command attempt 7 failed with client timeout err: exit status 1,"
     "Error response from daemon: Get https://registry-1.docker.io/v2/: net/http: request canceled while waiting "
     "for connection (Client.Timeout exceeded while awaiting headers) Job environment preparation failed on "
     "10.8.96.89.",
     "https://github.com/Azure/MachineLearningNotebooks/issues/1482 (also #1484)"),
    ("service error", True, "ServiceError", "InternalServerError",
     "https://github.com/Azure/azureml-previews/issues/258 (a job's error, from az ml job stream)"),
    ("service error", True, "ServiceError",
     "AzureMLCompute job failed.\nOrchestrateJobError: Failed to execute command group with error Got "
     "CommonRuntimeJobError from executing command: \nDocker container `xxxxxxxx-execution-wrapper` failed with "
     "status code `1` due to response error: \nNone",
     "https://github.com/getindata/kedro-azureml/issues/6 (the job's Error JSON, ComponentName globaljobdispatcher)"),
    ("compute not available", True, "UserError",
     "AzureMLCompute cluster gpu-cluster is in failed state and thus not ready for runs",
     "https://github.com/Azure/MachineLearningNotebooks/issues/642 (also #1043)"),
    ("user error", False, "UserError",
     "AzureMLCompute job failed.\nJobFailed: Submitted script failed with a non-zero exit code; see the driver "
     "log file for details.",
     "https://github.com/Azure/azure-cli-extensions/issues/2346 (also Azure/MachineLearningNotebooks#1360)"),
    ("user error", False, "UserError", "Execution failed. User process 'python' exited with status code 1. "
     "Please check log file 'user_logs/std_log.txt' for error details.",
     "the v2 runtime's wording for a script's non-zero exit (the fake's v2 failed job: exit code 1)"),
    ("unrecognised failure", False, "UserError",
     "AzureMLCompute job failed. AZFMountError: unable to mount Azure File Info: Could not mount Azure File Share",
     "https://github.com/MicrosoftDocs/azure-docs/issues/39532 (a datastore mount: credentials or network rules)"),
]

# Not from a job's report: wordings the classes also cover, stated by the service in its error names (DiskFullError,
# NodeFailure) or in another of its errors; kept apart from the reported payloads above.
NAMED = [
    ("node failure", True, "UserError",
     "The specified Azure ML Compute Instance XXX encountered an unusable node. Please try to restart the compute "
     "instance to recover.",
     "https://github.com/MicrosoftDocs/azure-docs/issues/85756 (a compute instance's provisioning error: the "
     "service's words for a node it lost; no job failing for a node was found reported)"),
    ("node failure", True, "ServiceError", "AzureMLCompute job failed. NodeFailure: a node of this job failed.",
     "no report found: the service's error name"),
    ("disk full on node", True, "UserError", "AzureMLCompute job failed. DiskFullError: Disk full while running job.",
     "no report found: the service's error name"),
]
