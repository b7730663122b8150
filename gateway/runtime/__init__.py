"""What keeps backends alive: pools, worker processes, the compile workers, health monitor,
breakers and retry policies."""
