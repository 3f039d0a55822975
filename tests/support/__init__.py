"""Helpers shared by the tests: test data, servers, clusters and fault injection. Nothing here is collected as a
test; fixtures that use these helpers live in the conftest.py files beside the tests."""
