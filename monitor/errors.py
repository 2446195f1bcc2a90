"""Exception tree of GLM Monitor.

Only our own bugs and the user's bad input raise; provider failures are data (see ``monitor.outcomes``).

    MonitorError                 base of everything we raise on purpose
    ├── ConfigError              the config file or an environment variable is wrong (exit code 2)
    ├── StoreError               the database cannot be opened, migrated or written
    ├── PricingError             the price data file or a price override is malformed
    └── FxError                  an exchange rate is missing, malformed or cannot be fetched
"""

from __future__ import annotations


class MonitorError(Exception):
    """Base class for every error GLM Monitor raises on purpose."""


class ConfigError(MonitorError):
    """The configuration is invalid; the message names the file, the key path, the bad value and the fix."""


class StoreError(MonitorError):
    """The database cannot be opened, migrated or written."""


class PricingError(MonitorError):
    """The price catalog data or a configured price override is malformed."""


class FxError(MonitorError):
    """An exchange rate is missing, malformed, or could not be fetched."""
