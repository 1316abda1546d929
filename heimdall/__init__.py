"""Heimdall Serve: localize radio transmitters from WebSDR IQ captures."""
