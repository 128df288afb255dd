"""Defaults for every package of an application in one call."""

from __future__ import annotations

from typing import Any

from cachu._cachu import CacheConfig, configure

#: The ``package=`` of the defaults: what every package without a ``configure()`` of
#: its own reads (no Python package has this name).
EVERY_PACKAGE = "*"


def configure_defaults(**options: Any) -> CacheConfig:
    """Sets options for every package that has no configuration of its own: an
    application whose settings module and cached modules are different packages
    configures them all at once (``configure_defaults(backend="redis", ...)``). A
    package's own ``configure()`` starts from these defaults and overrides them.
    Takes the options of ``configure()``; the same as ``configure(package="*", ...)``."""
    if "package" in options:
        raise TypeError("configure_defaults() configures every package: it takes no package=")
    return configure(package=EVERY_PACKAGE, **options)
