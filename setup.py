"""The optional C extension behind sfu.media.udpio (all other metadata is in pyproject.toml).

optional=True: without a C compiler or Python headers the build only warns, and udpio falls
back to pure Python (udpio.ACCELERATED is then False; tests/test_udpio.py flags it where gcc
exists). A setup.py rather than [tool.setuptools] ext-modules, which needs setuptools >= 74.1.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("sfu.media._udpio", ["sfu/media/_udpio.c"], optional=True, extra_compile_args=["-O2", "-Wall"])])
