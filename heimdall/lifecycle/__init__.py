"""The model lifecycle: MLflow registry, import into the BentoML store, release, the `heimdall` CLI.

Not shipped in the Bento (needs the `lifecycle` extra).
"""
