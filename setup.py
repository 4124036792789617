"""For Beam workers on Dataflow (`--setup_file=./setup.py`): Beam installs the
package from a setup.py. The project itself is described in pyproject.toml."""

import setuptools

setuptools.setup()
