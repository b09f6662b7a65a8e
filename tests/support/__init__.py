"""Shared test harnesses: real servers, bundles and datasets built for tests."""
