"""The test suite is a package: shared code is imported as `tests.support.<module>`."""
