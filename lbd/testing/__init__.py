"""The test lab: network-namespace hosts, the demo, interop runners, simulators.

Used by tests/, bench/ and ``make demo``; never by the daemon. No production
module imports ``lbd.testing`` (tests/unit/test_layering.py walks ``lbd/`` and
fails on one that does), and the wheel leaves this package out
(pyproject.toml, ``[tool.setuptools.packages.find] exclude``): a production node
installs none of it. A checkout's editable install (``make venv``) maps the
whole ``lbd`` directory, so ``python -m lbd.testing.<module>`` works there.
"""
