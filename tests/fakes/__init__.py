"""Fakes of outside APIs (Kubernetes) that real clients talk to over HTTP."""
