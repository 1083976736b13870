"""Test support shared by `tests/` and `bench/`: real-server harnesses, one server
launcher. No production module imports it."""
