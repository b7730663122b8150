"""Upper bounds of configuration values, shared by every settings model."""

from __future__ import annotations

# Upper bounds of durations: far beyond any sensible setting, well inside what datetime and
# timedelta arithmetic take (a retention of 1e7 days made every finished job fail) and what
# threading's waits take (an exporter interval past TIMEOUT_MAX killed its thread).
MAX_DAYS = 36_500.0
MAX_SECONDS = MAX_DAYS * 86_400.0
# Mebibyte settings: far beyond any machine, and their bytes (doubled, for the reply cap) still
# fit a C long, which setrlimit takes (a larger one crashed the first worker's start).
MAX_MB = 2**40
# A price per task, shot or second: far beyond any provider's, and small enough that a job's
# cost (times shots and tasks of int64 range, seconds to MAX_SECONDS) and a period's sum of them
# stay finite (a price near float max made a cost infinite, which no Duration or total takes).
MAX_PRICE = 1e9
