"""btsoot: incremental offsite backups that send only what changed."""

__version__ = "0.1.0"
