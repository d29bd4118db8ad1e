"""Helpers shared by the test modules (no tests here), imported as ``from tests.support.X
import ...``: paths of the repository and the shared datasets, small models, the metric tests'
trained LeNet and explain functions, the tiny run every reading test shares, and the zennit
oracle script. Fixtures that wrap them live in tests/conftest.py."""
