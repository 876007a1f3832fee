"""Azure ML (SDK v1, azureml-core): push, register, compute, submit, model.

Concept map: the image ``invoke build`` made is pushed to a registry (the workspace's ACR by default),
registered as an Azure ML Environment whose version is the image's content hash (same image, same version),
and runs are ScriptRunConfigs built from the same job definition as ``invoke run-local``. Everything that can
be decided offline is (settings, preflight, the SDK objects and what the SDK would send); the network is
reached only through ``backend.AzureBackend``, the one seam tests replace.

azureml-core is an optional extra (``pip install -e '.[azure]'``) and is imported only inside functions here,
so ``invoke --list`` and the local tasks never load it.
"""
