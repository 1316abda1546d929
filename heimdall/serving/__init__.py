"""The request path of the running service: decode, cache, batched inference, postprocess, HTTP.

Shipped in the Bento with `heimdall.contract`; imports nothing from lifecycle or training.
"""
