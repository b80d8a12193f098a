"""Builds consent-client. Its gRPC stubs are generated from ../../proto first (before
setuptools looks for the packages), so an install always carries the current protos."""

import sys
from pathlib import Path

from setuptools import setup

sys.path.insert(0, str(Path(__file__).resolve().parent))
import generate_stubs  # noqa: E402

generate_stubs.generate()
setup()
