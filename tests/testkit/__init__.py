"""Helpers shared by the tests (on pytest's ``pythonpath``: ``from testkit.tiny import tiny_cfg``)."""
