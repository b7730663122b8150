"""Submission, admission, scheduling, watching and recovery of jobs."""
