"""The exception root of sqvae-bench and the subclasses users may catch."""


class BenchError(Exception):
    """Base class of every error the harness raises on purpose."""


class ConfigError(BenchError, ValueError):
    """A suite file, option or setting is invalid (CLI exit code 2)."""


class DataError(BenchError):
    """A dataset is missing or malformed. The message says where we looked and how to get it."""


class StoreError(BenchError):
    """A file of a run folder (status.json, metrics.json, ...) is missing or unreadable; the message
    names the file and says how to recover."""


class RunFailed(BenchError):
    """A training run stopped for a reason worth recording (non-finite loss, ...)."""
