"""The Azure ML backend: push, register, compute, submit, model, with SDK v2 (azure-ai-ml, the default) or SDK v1
(azureml-core), chosen by ``azure.sdk``.

Concept map: the image ``invoke build`` made is pushed to a registry (the workspace's ACR by default),
registered as an Azure ML Environment whose version is the image's content hash and whose image is the pushed
digest (same image, same version), and runs are jobs built from the same job definition as ``invoke run-local``
(v2: a command job; v1: a ScriptRunConfig). ``flow`` signs in once per task and prepares each request once;
everything that can be decided offline is (settings, preflight, the SDK objects and what the SDK would send).
The network is reached only through each SDK's backend (``backend.AzureBackend``), the one seam tests replace.

The SDKs are the optional extra ``azure`` (``pip install -e '.[azure]'``) and are imported only inside
functions, so ``invoke --list`` and the local tasks never load them.
"""
